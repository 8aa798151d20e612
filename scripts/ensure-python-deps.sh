#!/usr/bin/env bash
# Python dependencies of the interop tests (tests/interop/*.py): a virtualenv
# in ./.venv-interop with pinned matrix-nio. Idempotent: a venv that already
# has the pinned version is left alone. Run from anywhere; the venv lives in
# the repository root. Prints the venv's python path last.
set -euo pipefail

NIO_VERSION="0.26.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HEARTH_INTEROP_VENV:-$ROOT/.venv-interop}"
PY="$VENV/bin/python"

have_nio() {
    [ -x "$PY" ] && "$PY" - "$NIO_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import nio  # noqa: F401  (the import itself must work)
sys.exit(0 if version("matrix-nio") == sys.argv[1] else 1)
PYEOF
}

if have_nio; then
    echo "$PY"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "ensure-python-deps: $PYTHON not found (install python3)" >&2
    exit 1
fi
# Debian's python3 ships venv (and ensurepip) separately.
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "ensure-python-deps: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq python3-venv >&2
    else
        echo "ensure-python-deps: $PYTHON has no venv module and apt-get is unavailable" >&2
        exit 1
    fi
fi

if [ ! -x "$PY" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >&2
fi
"$PY" -m pip install --quiet --disable-pip-version-check "matrix-nio==$NIO_VERSION" >&2
have_nio || { echo "ensure-python-deps: matrix-nio $NIO_VERSION did not install" >&2; exit 1; }
echo "$PY"

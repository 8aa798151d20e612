#!/usr/bin/env bash
# A real Synapse for the federation interop tests (tests/federation_synapse.rs):
# a virtualenv in ./.venv-synapse with a pinned matrix-synapse from PyPI
# (SQLite is enough for it here). Idempotent. Prints the venv's python last.
set -euo pipefail

SYNAPSE_VERSION="1.163.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HEARTH_SYNAPSE_VENV:-$ROOT/.venv-synapse}"
PY="$VENV/bin/python"

have_synapse() {
    [ -x "$PY" ] && "$PY" - "$SYNAPSE_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import synapse.app.homeserver  # noqa: F401
sys.exit(0 if version("matrix-synapse") == sys.argv[1] else 1)
PYEOF
}

if have_synapse; then
    echo "$PY"
    exit 0
fi
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq python3-venv >&2
    else
        echo "ensure-synapse: $PYTHON has no venv module" >&2
        exit 1
    fi
fi
if [ ! -x "$PY" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >&2
fi
"$PY" -m pip install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2
have_synapse || { echo "ensure-synapse: matrix-synapse $SYNAPSE_VERSION did not install" >&2; exit 1; }
echo "$PY"

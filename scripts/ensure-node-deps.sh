#!/usr/bin/env bash
# Node dependencies of the matrix-js-sdk interop test (tests/interop_jssdk.rs):
# the packages pinned in tests/interop/js/package-lock.json (matrix-js-sdk and,
# with it, its Rust crypto @matrix-org/matrix-sdk-crypto-wasm, whose wasm
# binary ships inside the npm package), installed into
# tests/interop/js/node_modules (git-ignored) with `npm ci`. Idempotent: when
# node_modules already matches the lock file (a stamp holds the lock's hash)
# nothing runs. Fails loudly when node or npm is missing. Prints the
# directory of the scenario last.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/tests/interop/js"
STAMP="$DIR/node_modules/.hearth-lock-sha"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "ensure-node-deps: $tool not found (install Node.js >= 20 with npm)" >&2
        exit 1
    fi
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "ensure-node-deps: node $(node --version) is too old (matrix-js-sdk needs >= 20)" >&2
    exit 1
fi

want="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -d "$DIR/node_modules/matrix-js-sdk" ] \
    && [ -d "$DIR/node_modules/@matrix-org/matrix-sdk-crypto-wasm" ]; then
    echo "$DIR"
    exit 0
fi

(cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
for pkg in matrix-js-sdk @matrix-org/matrix-sdk-crypto-wasm; do
    [ -d "$DIR/node_modules/$pkg" ] || {
        echo "ensure-node-deps: $pkg did not install" >&2
        exit 1
    }
done
echo "$want" >"$STAMP"
echo "$DIR"

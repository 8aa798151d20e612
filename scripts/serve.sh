#!/usr/bin/env bash
# Start hearth on its embedded default: its own PostgreSQL cluster under
# ./hearth-data, client API on 127.0.0.1:8008. Extra arguments go to `hearth serve`
# (e.g. --config hearth.toml); HEARTH_* variables override config keys.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-postgres.sh
export HEARTH_SERVER_NAME="${HEARTH_SERVER_NAME:-localhost}"
exec cargo run --release --bin hearth -- serve "$@"

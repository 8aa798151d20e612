#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, then every
# test of the workspace against real PostgreSQL clusters and real sockets.
# Nothing is skipped: a missing prerequisite fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-postgres.sh
./scripts/ensure-node-deps.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
# The HTTP suite once more on the epoll fallback driver, so both drivers are covered.
HEARTH_TEST_LEGACY_DRIVER=1 cargo test --test http_server --test http_handoff
# The client-API suites once more on a single shard: "1 and several shards".
HEARTH_TEST_SHARDS=1 cargo test $(for t in tests/api_*.rs; do printf -- '--test %s ' "$(basename "$t" .rs)"; done)
# Fuzz every parser of untrusted input for a bounded time (docs/fuzzing.md).
./scripts/fuzz.sh

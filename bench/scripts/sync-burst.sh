#!/usr/bin/env bash
# Memory under a burst of initial syncs (issue 14, "Bounded memory"): USERS
# members of one room all do their first (initial, full-state) /sync at
# once — `hearth-bench sync-fanout`, whose members start with exactly that —
# against a fresh release hearth (embedded PostgreSQL), and the server's
# peak resident memory (VmHWM) is printed when it ends.
#
# Usage: bench/scripts/sync-burst.sh [LABEL]
# Env:   USERS=1000 SHARDS=(cores) DURATION=5 OUT=bench/results/sync-burst
#        HEARTH_BIN=target/release/hearth BENCH_BIN=target/release/hearth-bench
#        Any HEARTH_* variable is passed to hearth (e.g. the admission knobs).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
LABEL=${1:-run}
USERS=${USERS:-1000}
SHARDS=${SHARDS:-$(nproc)}
DURATION=${DURATION:-5}
HEARTH_BIN=${HEARTH_BIN:-$REPO/target/release/hearth}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/sync-burst}
mkdir -p "$OUT"
source "$REPO/bench/scripts/fed-lib.sh"

echo "sync-burst $LABEL: $(date -u +%FT%TZ) nproc $(nproc) load $(cut -d' ' -f1-3 /proc/loadavg) users $USERS"
start_hearth_fed
"$BENCH_BIN" sync-fanout --url "http://127.0.0.1:$H_PORT" --users "$USERS" \
    --duration "$DURATION" --warmup 0 --quiet --server-pid "$H_PID" \
    --json "$OUT/$LABEL.json" || true
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$H_PID/status")
echo "sync-burst $LABEL: hearth VmHWM $((hwm / 1024)) MB, load $(cut -d' ' -f1-3 /proc/loadavg)"
stop_hearth_fed "$OUT/$LABEL.log"

#!/usr/bin/env bash
# Federation fan-out (issue 13): `hearth-bench fed-fanout` — one message in
# a room joined by REMOTES simulated remote servers, the time until all of
# them have it — against a fresh hearth (embedded PostgreSQL, TLS federation
# listener on loopback) and against the Synapse peer with federation
# (bench/peers/synapse, work dir .work-fed, server name localhost:$SYN_FED_PORT),
# in one run, then the ratios.
#
# Usage: bench/scripts/fed-fanout.sh [hearth|synapse|both]     (default both)
# Env:   REMOTES=100 DURATION=20 WARMUP=2 ROOM_VERSION=10 SHARDS=(cores)
#        HEARTH_BIN=target/release/hearth BENCH_BIN=target/release/hearth-bench
#        OUT=bench/results/fed-fanout SYN_PORT=18018 SYN_FED_PORT=18458
# Synapse once: SYNAPSE_WORK=bench/peers/synapse/.work-fed SYNAPSE_PORT=18018 \
#        SYNAPSE_FED_PORT=18458 SYNAPSE_BCRYPT_ROUNDS=4 bench/peers/synapse/setup.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WHICH=${1:-both}
REMOTES=${REMOTES:-100}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-2}
ROOM_VERSION=${ROOM_VERSION:-10}
SHARDS=${SHARDS:-$(nproc)}
HEARTH_BIN=${HEARTH_BIN:-$REPO/target/release/hearth}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/fed-fanout}
SYN_PORT=${SYN_PORT:-18018}
SYN_FED_PORT=${SYN_FED_PORT:-18458}
SYN_WORK=${SYN_WORK:-$REPO/bench/peers/synapse/.work-fed}
mkdir -p "$OUT"
source "$REPO/bench/scripts/fed-lib.sh"

common=(--remotes "$REMOTES" --duration "$DURATION" --warmup "$WARMUP" --room-version "$ROOM_VERSION")

run_hearth() {
    start_hearth_fed
    "$BENCH_BIN" fed-fanout --url "http://127.0.0.1:$H_PORT" --fed-name "localhost:$H_FPORT" \
        "${common[@]}" --server-pid "$H_PID" --label hearth \
        --json "$OUT/hearth.json" --summary "$OUT/hearth-summary.json" || true
    stop_hearth_fed "$OUT/hearth.log"
}

run_synapse() {
    SYNAPSE_WORK=$SYN_WORK SYNAPSE_PORT=$SYN_PORT SYNAPSE_FED_PORT=$SYN_FED_PORT \
        "$REPO/bench/peers/synapse/start.sh"
    local pid pg
    pid=$(cat "$SYN_WORK/synapse/homeserver.pid")
    pg=$(head -1 "$SYN_WORK/pg/data/postmaster.pid")
    "$BENCH_BIN" fed-fanout --url "http://127.0.0.1:$SYN_PORT" --fed-name "localhost:$SYN_FED_PORT" \
        "${common[@]}" --server-pid "$pid" --pg-pid "$pg" --label synapse \
        --json "$OUT/synapse.json" --summary "$OUT/synapse-summary.json" || true
}

echo "fed-fanout: $(date -u +%FT%TZ) nproc $(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) load $(cut -d' ' -f1-3 /proc/loadavg)"
case $WHICH in
    hearth) run_hearth ;;
    synapse) run_synapse ;;
    both) run_hearth; run_synapse ;;
esac
echo "fed-fanout: done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -f "$OUT/hearth-summary.json" ] && [ -f "$OUT/synapse-summary.json" ]; then
    python3 - "$OUT/hearth-summary.json" "$OUT/synapse-summary.json" <<'PY'
import json, sys
h, s = (json.load(open(p)) for p in sys.argv[1:3])
print(f"| figure ({h['remotes']} remote servers) | hearth | Synapse | Synapse / hearth |")
print("| --- | ---: | ---: | ---: |")
for k, label in [("all_p50_ms", "send → last server p50 ms"), ("all_p99_ms", "send → last server p99 ms"),
                 ("each_p50_ms", "send → each server p50 ms"), ("each_p99_ms", "send → each server p99 ms"),
                 ("send_p50_ms", "send answered p50 ms")]:
    a, b = h[k], s[k]
    print(f"| {label} | {a:.1f} | {b:.1f} | **{b / a:.1f}x** |" if a else f"| {label} | {a} | {b} | - |")
print(f"| messages measured | {h['messages']} | {s['messages']} | |")
PY
fi

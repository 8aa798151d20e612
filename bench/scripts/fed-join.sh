#!/usr/bin/env bash
# Federation join (issue 13): `hearth-bench fed-join` — a local user joins a
# room of MEMBERS members and STATE state events hosted by a simulated remote
# server; the time until the user can send and until the full member list —
# against a fresh hearth (embedded PostgreSQL, TLS federation listener on
# loopback) and the Synapse peer (bench/peers/synapse, work dir .work-fed),
# in one run, then the ratios.
#
# Usage: bench/scripts/fed-join.sh [hearth|synapse|both]     (default both)
# Env:   MEMBERS=10000 STATE=20000 ROOM_VERSION=10 SHARDS=(cores)
#        HEARTH_BIN=target/release/hearth BENCH_BIN=target/release/hearth-bench
#        OUT=bench/results/fed-join SYN_PORT=18018 SYN_FED_PORT=18458
# Synapse once: SYNAPSE_WORK=bench/peers/synapse/.work-fed SYNAPSE_PORT=18018 \
#        SYNAPSE_FED_PORT=18458 SYNAPSE_BCRYPT_ROUNDS=4 bench/peers/synapse/setup.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WHICH=${1:-both}
MEMBERS=${MEMBERS:-10000}
STATE=${STATE:-20000}
ROOM_VERSION=${ROOM_VERSION:-10}
SHARDS=${SHARDS:-$(nproc)}
HEARTH_BIN=${HEARTH_BIN:-$REPO/target/release/hearth}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/fed-join}
SYN_PORT=${SYN_PORT:-18018}
SYN_FED_PORT=${SYN_FED_PORT:-18458}
SYN_WORK=${SYN_WORK:-$REPO/bench/peers/synapse/.work-fed}
mkdir -p "$OUT"
source "$REPO/bench/scripts/fed-lib.sh"

common=(--members "$MEMBERS" --state-events "$STATE" --room-version "$ROOM_VERSION" --duration 0 --warmup 0 --quiet)

run_hearth() {
    start_hearth_fed
    "$BENCH_BIN" fed-join --url "http://127.0.0.1:$H_PORT" \
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
    "$BENCH_BIN" fed-join --url "http://127.0.0.1:$SYN_PORT" \
        "${common[@]}" --server-pid "$pid" --pg-pid "$pg" --label synapse \
        --json "$OUT/synapse.json" --summary "$OUT/synapse-summary.json" || true
}

echo "fed-join: $(date -u +%FT%TZ) nproc $(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) load $(cut -d' ' -f1-3 /proc/loadavg)"
case $WHICH in
    hearth) run_hearth ;;
    synapse) run_synapse ;;
    both) run_hearth; run_synapse ;;
esac
echo "fed-join: done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -f "$OUT/hearth-summary.json" ] && [ -f "$OUT/synapse-summary.json" ]; then
    python3 - "$OUT/hearth-summary.json" "$OUT/synapse-summary.json" <<'PY'
import json, sys
h, s = (json.load(open(p)) for p in sys.argv[1:3])
print(f"| figure ({h['members']} members, {h['state_events']} state events) | hearth | Synapse | Synapse / hearth |")
print("| --- | ---: | ---: | ---: |")
for k, label in [("join_ms", "join answered ms"), ("send_ms", "first message sent ms"),
                 ("full_ms", "full member list ms")]:
    a, b = h[k], s[k]
    print(f"| {label} | {a:.0f} | {b:.0f} | **{b / a:.1f}x** |" if a == a and b == b and a else f"| {label} | {a} | {b} | - |")
PY
fi

#!/usr/bin/env bash
# Federation ingest (issue 12): `hearth-bench fed-ingest` against a fresh
# hearth (embedded PostgreSQL, a TLS federation listener on loopback) and
# against the Synapse peer with federation (bench/peers/synapse, own work dir
# .work-fed, server name localhost:$SYN_FED_PORT), in one run, then the ratios.
#
# Usage: bench/scripts/fed-ingest.sh [hearth|synapse|both]     (default both)
# Env:   USERS=8 (K parked members) ROOMS=4 REMOTE_USERS=4 DURATION=10 WARMUP=2
#        PDUS=30000 (built for hearth) SYN_PDUS=3000 (for Synapse) ROOM_VERSION=10
#        SHARDS=(cores) HEARTH_BIN=target/release/hearth BENCH_BIN=target/release/hearth-bench
#        OUT=bench/results/fed-ingest SYN_PORT=18018 SYN_FED_PORT=18458
#        EXTRA="--rate 8 --txn-pdus 2" (more fed-ingest flags, both servers)
#        PERF=1: perf record -g of hearth during its run ($OUT/hearth.perf.data)
# Before measuring Synapse, waits (up to 180 s) until its staging table of
# inbound PDUs (federation_inbound_events_staging) is empty: Synapse, like
# hearth, answers /send once PDUs are staged and keeps applying them after.
# Synapse once: SYNAPSE_WORK=bench/peers/synapse/.work-fed SYNAPSE_PORT=18018 \
#        SYNAPSE_FED_PORT=18458 SYNAPSE_BCRYPT_ROUNDS=4 bench/peers/synapse/setup.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WHICH=${1:-both}
USERS=${USERS:-8}
ROOMS=${ROOMS:-4}
REMOTE_USERS=${REMOTE_USERS:-4}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PDUS=${PDUS:-30000}
SYN_PDUS=${SYN_PDUS:-3000}
ROOM_VERSION=${ROOM_VERSION:-10}
SHARDS=${SHARDS:-$(nproc)}
HEARTH_BIN=${HEARTH_BIN:-$REPO/target/release/hearth}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/fed-ingest}
SYN_PORT=${SYN_PORT:-18018}
SYN_FED_PORT=${SYN_FED_PORT:-18458}
SYN_WORK=${SYN_WORK:-$REPO/bench/peers/synapse/.work-fed}
mkdir -p "$OUT"

source "$REPO/bench/scripts/fed-lib.sh"

common=(--users "$USERS" --rooms "$ROOMS" --remote-users "$REMOTE_USERS"
        --duration "$DURATION" --warmup "$WARMUP" --room-version "$ROOM_VERSION")
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && common+=($EXTRA)

run_hearth() {
    start_hearth_fed
    local port=$H_PORT fport=$H_FPORT pid=$H_PID
    local perf=
    if [ -n "${PERF:-}" ]; then
        perf record -F 499 -g -p "$pid" -o "$OUT/hearth.perf.data" >/dev/null 2>&1 &
        perf=$!
    fi
    "$BENCH_BIN" fed-ingest --url "http://127.0.0.1:$port" --fed-name "localhost:$fport" \
        "${common[@]}" --pdus "$PDUS" --server-pid "$pid" --label hearth \
        --json "$OUT/hearth.json" --summary "$OUT/hearth-summary.json" || true
    if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
    stop_hearth_fed "$OUT/hearth.log"
}

run_synapse() {
    local peer=$REPO/bench/peers/synapse
    SYNAPSE_WORK=$SYN_WORK SYNAPSE_PORT=$SYN_PORT SYNAPSE_FED_PORT=$SYN_FED_PORT "$peer/start.sh"
    local pid pg n
    for _ in $(seq 1 180); do
        n=$(runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -h "$SYN_WORK/pg/run" -p 5432 \
            -U postgres -d synapse -qAt -c 'SELECT count(*) FROM federation_inbound_events_staging')
        [ "$n" = 0 ] && break
        sleep 1
    done
    echo "fed-ingest: Synapse staging holds ${n:-?} PDUs before the run"
    pid=$(cat "$SYN_WORK/synapse/homeserver.pid")
    pg=$(head -1 "$SYN_WORK/pg/data/postmaster.pid")
    "$BENCH_BIN" fed-ingest --url "http://127.0.0.1:$SYN_PORT" --fed-name "localhost:$SYN_FED_PORT" \
        "${common[@]}" --pdus "$SYN_PDUS" --server-pid "$pid" --pg-pid "$pg" --label synapse \
        --json "$OUT/synapse.json" --summary "$OUT/synapse-summary.json" || true
}

echo "fed-ingest: $(date -u +%FT%TZ) nproc $(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) load $(cut -d' ' -f1-3 /proc/loadavg)"
case $WHICH in
    hearth) run_hearth ;;
    synapse) run_synapse ;;
    both) run_hearth; run_synapse ;;
esac
echo "fed-ingest: done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -f "$OUT/hearth-summary.json" ] && [ -f "$OUT/synapse-summary.json" ]; then
    python3 - "$OUT/hearth-summary.json" "$OUT/synapse-summary.json" <<'PY'
import json, sys
h, s = (json.load(open(p)) for p in sys.argv[1:3])
def r(k, inv=False):
    a, b = h[k], s[k]
    try:
        return (b / a) if inv else (a / b)
    except ZeroDivisionError:
        return float("nan")
print("| figure | hearth | Synapse | hearth / Synapse |")
print("| --- | ---: | ---: | ---: |")
print(f"| PDUs accepted /s | {h['pdus_per_s']:.0f} | {s['pdus_per_s']:.1f} | **{r('pdus_per_s'):.1f}x** |")
print(f"| PDUs applied /s (seen in /sync) | {h['applied_per_s']:.0f} | {s['applied_per_s']:.1f} | {r('applied_per_s'):.1f}x |")
print(f"| /send → /sync p50 ms | {h['delivery_p50_ms']:.1f} | {s['delivery_p50_ms']:.1f} | {r('delivery_p50_ms', True):.1f}x faster |")
print(f"| /send → /sync p99 ms | {h['delivery_p99_ms']:.1f} | {s['delivery_p99_ms']:.1f} | {r('delivery_p99_ms', True):.1f}x faster |")
print(f"| server CPU µs / PDU | {h['server_cpu_us_per_pdu']:.0f} | {s['server_cpu_us_per_pdu']:.0f} | {r('server_cpu_us_per_pdu', True):.1f}x less |")
print(f"| PostgreSQL CPU µs / PDU | {h['pg_cpu_us_per_pdu']:.0f} | {s['pg_cpu_us_per_pdu']:.0f} | {r('pg_cpu_us_per_pdu', True):.1f}x less |")
PY
fi

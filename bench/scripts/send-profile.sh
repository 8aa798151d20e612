#!/usr/bin/env bash
# Where a durable send's cost goes (issue 15 item 1), on both sides: the
# `send` scenario against a fresh hearth on its embedded PostgreSQL, with
# - PostgreSQL: pg_stat_statements (calls, rows and time per statement,
#   reset after setup so only the measured load counts), the WAL written
#   and the index tuples inserted per event;
# - hearth: `perf record --call-graph dwarf` over the measured window, reported as the
#   inclusive share of the functions of the send path.
#
# SCENARIO=sync-fanout profiles the fan-out instead (USERS members parked,
# one sender); SKIP=12 then leaves the members' initial syncs, which spill
# into the measured window, out of both profiles. Statements show their
# planning too (`track_planning`: a statement our client caches may still
# be planned on every call, bench/RESULTS.md issue 15).
#
# Usage: bench/scripts/send-profile.sh [BIN]   (default target/release/hearth)
# Env:   SCENARIO=send USERS=100 ROOMS=20 CONNECTIONS=32 DURATION=10 WARMUP=2
#        SKIP=0 SHARDS=(cores) PUSH=true PERF=true
#        BENCH_BIN=target/release/hearth-bench OUT=bench/results/send-profile
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$REPO/target/release/hearth}
SCENARIO=${SCENARIO:-send}
SKIP=${SKIP:-0}
USERS=${USERS:-100}
ROOMS=${ROOMS:-20}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SHARDS=${SHARDS:-$(nproc)}
PUSH=${PUSH:-true}
# The profile and the statistics span DURATION-2-SKIP s of the window: with
# none left, every per-event figure would divide by zero events.
if [ $((DURATION - 2 - SKIP)) -le 0 ]; then
    echo "DURATION ($DURATION) must exceed SKIP ($SKIP) + 2" >&2
    exit 2
fi
PERF=${PERF:-true}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/send-profile}
mkdir -p "$OUT"

# shellcheck source=fed-lib.sh
source "$REPO/bench/scripts/fed-lib.sh"   # free_port
PORT=$(free_port 18448)

dir=$(mktemp -d /tmp/hearth-sendprof.XXXXXX)
chmod 0755 "$dir"
pid=
perf_pid=
start() {
    HEARTH_SERVER_NAME=localhost HEARTH_SHARDS=$SHARDS HEARTH_DATA_DIR=$dir \
        HEARTH_LISTENERS__0__PORT=$PORT HEARTH_LISTENERS__0__ADDRESS=127.0.0.1 \
        HEARTH_RATE_LIMITS__ENABLED=false HEARTH_LOG__ACCESS_LOG=false HEARTH_PUSH__ENABLED=$PUSH \
        "$BIN" serve >>"$dir/hearth.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 1200); do
        curl -sf "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null && return 0
        sleep 0.1
    done
    echo "hearth did not start; its log:" >&2
    tail -n 30 "$dir/hearth.log" >&2
    exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

# First start creates the cluster; then pg_stat_statements is preloaded
# (lines after hearth's includes win) and the server restarted.
start
stop
conf=$(find "$dir" -name postgresql.conf | head -n1)
printf "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'all'\npg_stat_statements.track_planning = on\n" >>"$conf"
start
sock=$(find "$dir" -name '.s.PGSQL.*' ! -name '*.lock' | head -n1)
pg_port=${sock##*.}
psql_() {
    local as=()
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    "${as[@]}" psql -X -q -At -h "$(dirname "$sock")" -p "$pg_port" -U hearth -d hearth "$@"
}
psql_ -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

# The bench sets up users and rooms, warms up, then measures; the
# statistics are reset SKIP s after its first "measure" progress line, so
# they cover the last DURATION-1-SKIP s of the window (every figure is per
# event counted in that same span).
case "$SCENARIO" in
send) shape=(--users "$USERS" --rooms "$ROOMS" --connections "$CONNECTIONS") ;;
sync-fanout) shape=(--users "$USERS") ;;
*) echo "SCENARIO must be send or sync-fanout" >&2; exit 2 ;;
esac
"$BENCH_BIN" "$SCENARIO" --url "http://127.0.0.1:$PORT" "${shape[@]}" \
    --duration "$DURATION" --warmup "$WARMUP" \
    --server-pid "$pid" --label "$SCENARIO-profile" --json "$OUT/$SCENARIO.json" \
    >"$OUT/bench.log" 2>&1 &
bench=$!
for _ in $(seq 1 3000); do
    grep -q "measure\]" "$OUT/bench.log" 2>/dev/null && break
    sleep 0.1
done
sleep "$SKIP"
psql_ -c "SELECT pg_stat_statements_reset()" >/dev/null
psql_ -c "SELECT pg_stat_reset()" >/dev/null
wal0=$(psql_ -c "SELECT pg_current_wal_lsn()")
ev0=$(psql_ -c "SELECT count(*) FROM events")
if [ "$PERF" = true ]; then
    perf record -F 999 --call-graph dwarf,16384 -p "$pid" -o "$OUT/perf.data" -- sleep "$((DURATION - 2 - SKIP))" 2>"$OUT/perf-record.log" &
    perf_pid=$!
fi
wait "$bench"
[ -n "${perf_pid:-}" ] && { wait "$perf_pid" || true; }
ev1=$(psql_ -c "SELECT count(*) FROM events")
wal1=$(psql_ -c "SELECT pg_current_wal_lsn()")
events=$((ev1 - ev0))
tail -n 15 "$OUT/bench.log"
echo "events in the window: $events"
{
    echo "# events $events"
    echo "# WAL bytes per event"
    psql_ -c "SELECT round(pg_wal_lsn_diff('$wal1', '$wal0') / greatest($events, 1))"
    echo "# statements: calls/event, rows/event, ms total, µs/call, planning µs/call, plans"
    psql_ -F ' | ' -c "SELECT round(calls::numeric / greatest($events,1), 2), \
        round(rows::numeric / greatest($events,1), 2), round(total_exec_time::numeric, 0), \
        round((total_exec_time * 1000 / greatest(calls,1))::numeric, 1), \
        round((total_plan_time * 1000 / greatest(calls,1))::numeric, 1), plans, \
        left(regexp_replace(query, '\s+', ' ', 'g'), 110) \
        FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 25"
    echo "# tables: rows inserted/event, index count"
    psql_ -F ' | ' -c "SELECT relname, round(n_tup_ins::numeric / greatest($events,1), 2), \
        round(n_tup_upd::numeric / greatest($events,1), 2), round(n_tup_del::numeric / greatest($events,1), 2), \
        (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) \
        FROM pg_stat_user_tables s WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_ins DESC"
} | tee "$OUT/postgres.txt"
if [ "$PERF" = true ]; then
    perf report -i "$OUT/perf.data" --children --stdio --percent-limit 1.5 \
        --sort symbol -g none 2>/dev/null | grep -v "^$" | grep -v "^#" | head -n 150 >"$OUT/perf-children.txt" || true
    echo "perf: $OUT/perf-children.txt"
fi
stop

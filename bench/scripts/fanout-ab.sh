#!/usr/bin/env bash
# A /sync scenario against fresh hearths, one binary after another (A/B runs
# in one session): each BIN is started on its embedded PostgreSQL (2 shards,
# access log and rate limits off), measured, stopped.
#
#   SCENARIO=sync-fanout (default): `hearth-bench sync-fanout --users USERS
#     --duration 15 --warmup 2`;
#   SCENARIO=sync-idle: the issue's neutral load (`--users USERS --rooms 20
#     --connections 32 --duration 10 --warmup 2`), and before the first and
#     after the last BIN the raw monoio responder under `http` with 32
#     connections, so the idle sync's share of the HTTP floor is in the run.
#
# Usage: bench/scripts/fanout-ab.sh USERS BIN...
# Env:   SCENARIO, BENCH_BIN=target/release/hearth-bench OUT=bench/results/fanout-ab
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
USERS=$1
shift
SCENARIO=${SCENARIO:-sync-fanout}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/fanout-ab}
mkdir -p "$OUT"
# shellcheck source=fed-lib.sh
source "$REPO/bench/scripts/fed-lib.sh" # free_port

raw_responder() {
    local port pid
    port=$(free_port 18560)
    "$BENCH_BIN" raw-responder --listen "127.0.0.1:$port" --threads 2 >/dev/null 2>&1 &
    pid=$!
    sleep 0.5
    echo "=== raw responder ($1), $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    "$BENCH_BIN" http --url "http://127.0.0.1:$port/_matrix/client/versions" --connections 32 \
        --duration 10 --warmup 2 --server-pid "$pid" --label raw-responder --quiet \
        --json "$OUT/raw-$1.json" 2>&1 | grep -E "request|cpu"
    kill "$pid"
    wait "$pid" 2>/dev/null
}

case $SCENARIO in
sync-fanout) ARGS=(--users "$USERS" --duration 15 --warmup 2); SHOW="delivery|send |cpu" ;;
sync-idle)
    ARGS=(--users "$USERS" --rooms 20 --connections 32 --duration 10 --warmup 2)
    SHOW="sync|cpu"
    raw_responder first
    ;;
*) echo "unknown SCENARIO $SCENARIO" >&2; exit 2 ;;
esac
n=0
for BIN in "$@"; do
    n=$((n + 1))
    PORT=$(free_port 18460)
    dir=$(mktemp -d /tmp/hearth-fanout.XXXXXX)
    chmod 0755 "$dir"
    HEARTH_SERVER_NAME=localhost HEARTH_SHARDS=2 HEARTH_DATA_DIR=$dir \
        HEARTH_LISTENERS__0__PORT=$PORT HEARTH_LISTENERS__0__ADDRESS=127.0.0.1 \
        HEARTH_RATE_LIMITS__ENABLED=false HEARTH_LOG__ACCESS_LOG=false \
        "$BIN" serve >>"$dir/hearth.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null && break
        sleep 0.1
    done
    echo "=== run $n: $BIN, $SCENARIO $USERS users, $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    "$BENCH_BIN" "$SCENARIO" --url "http://127.0.0.1:$PORT" "${ARGS[@]}" \
        --server-pid "$pid" --label "$(basename "$BIN")" --quiet \
        --json "$OUT/run$n-$SCENARIO-$USERS.json" 2>&1 | grep -E "$SHOW"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    rm -rf "$dir"
done
[ "$SCENARIO" = sync-idle ] && raw_responder last
exit 0

#!/usr/bin/env bash
# sync-fanout against fresh hearths, one binary after another (A/B runs of
# the fan-out in one session): each BIN is started on its embedded
# PostgreSQL (2 shards, access log and rate limits off), measured with
# `hearth-bench sync-fanout --users USERS --duration 15 --warmup 2`, stopped.
#
# Usage: bench/scripts/fanout-ab.sh USERS BIN...
# Env:   BENCH_BIN=target/release/hearth-bench OUT=bench/results/fanout-ab
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
USERS=$1
shift
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/fanout-ab}
mkdir -p "$OUT"
# shellcheck source=fed-lib.sh
source "$REPO/bench/scripts/fed-lib.sh" # free_port
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
    echo "=== run $n: $BIN, $USERS members, $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    "$BENCH_BIN" sync-fanout --url "http://127.0.0.1:$PORT" --users "$USERS" --duration 15 \
        --warmup 2 --server-pid "$pid" --label "$(basename "$BIN")" --quiet \
        --json "$OUT/run$n-$USERS.json" 2>&1 | grep -E "delivery|send |cpu"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    rm -rf "$dir"
done

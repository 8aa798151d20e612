#!/usr/bin/env bash
# Push rule evaluation cost (issue 11, "Benchmark"): the `send` scenario in
# ONE room of 1,000 members, against hearth with push rules on
# (`push.enabled = true`, the default) and off, in the same run. With
# default rules every message notifies the 999 other members: one ruma
# evaluation (members are grouped by rule set) and 999 `push_actions` rows
# per message, written after the send was answered.
#
# Usage: bench/scripts/push-eval.sh
# Env:   USERS=1000 CONNECTIONS=32 DURATION=10 WARMUP=2 SHARDS=(cores)
#        HEARTH_BIN=target/release/hearth BENCH_BIN=target/release/hearth-bench
#        OUT=bench/results/push-eval   (one JSON per run)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
USERS=${USERS:-1000}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SHARDS=${SHARDS:-$(nproc)}
HEARTH_BIN=${HEARTH_BIN:-$REPO/target/release/hearth}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/push-eval}
mkdir -p "$OUT"

PORT=
for p in $(seq 18448 18548); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }

run() {
    local push=$1
    local dir
    dir=$(mktemp -d /tmp/hearth-pusheval.XXXXXX)
    chmod 0755 "$dir"
    HEARTH_SERVER_NAME=localhost HEARTH_SHARDS=$SHARDS HEARTH_DATA_DIR=$dir \
        HEARTH_LISTENERS__0__PORT=$PORT HEARTH_LISTENERS__0__ADDRESS=127.0.0.1 \
        HEARTH_RATE_LIMITS__ENABLED=false HEARTH_LOG__ACCESS_LOG=false HEARTH_PUSH__ENABLED=$push \
        "$HEARTH_BIN" serve >"$dir/hearth.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null && break
        sleep 0.1
    done
    "$BENCH_BIN" send --url "http://127.0.0.1:$PORT" --users "$USERS" --rooms 1 \
        --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
        --server-pid "$pid" --label "push-$push" --json "$OUT/push-$push.json"
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$dir"
}

run true
run false

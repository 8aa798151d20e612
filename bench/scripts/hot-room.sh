#!/usr/bin/env bash
# One hot room against many rooms (issue 10 item 4): the `send` scenario,
# 100 users and 32 connections, in ONE room and in 20 rooms, against each
# hearth binary given, in one run (a fresh hearth with its embedded
# PostgreSQL each time). Push rules are off by default so that the rows
# push writes per message (99 in one room of 100, 4 in rooms of 5) do not
# hide what the room's write path costs; PUSH=true measures with them.
#
# Usage: bench/scripts/hot-room.sh LABEL=BIN [LABEL=BIN ...]
# Env:   USERS=100 CONNECTIONS=32 DURATION=10 WARMUP=2 SHARDS=(cores) PUSH=false
#        BENCH_BIN=target/release/hearth-bench OUT=bench/results/hot-room
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
USERS=${USERS:-100}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SHARDS=${SHARDS:-$(nproc)}
PUSH=${PUSH:-false}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/hearth-bench}
OUT=${OUT:-$REPO/bench/results/hot-room}
mkdir -p "$OUT"
[ $# -gt 0 ] || { echo "usage: $0 LABEL=BIN ..." >&2; exit 2; }

PORT=
for p in $(seq 18448 18548); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }

run() {
    local label=$1 bin=$2 rooms=$3
    local dir
    dir=$(mktemp -d /tmp/hearth-hotroom.XXXXXX)
    chmod 0755 "$dir"
    HEARTH_SERVER_NAME=localhost HEARTH_SHARDS=$SHARDS HEARTH_DATA_DIR=$dir \
        HEARTH_LISTENERS__0__PORT=$PORT HEARTH_LISTENERS__0__ADDRESS=127.0.0.1 \
        HEARTH_RATE_LIMITS__ENABLED=false HEARTH_LOG__ACCESS_LOG=false HEARTH_PUSH__ENABLED=$PUSH \
        "$bin" serve >"$dir/hearth.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null && break
        sleep 0.1
    done
    "$BENCH_BIN" send --url "http://127.0.0.1:$PORT" --users "$USERS" --rooms "$rooms" \
        --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
        --server-pid "$pid" --label "$label-rooms$rooms" \
        --json "$OUT/$label-rooms$rooms-push-$PUSH.json"
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$dir"
}

for arg in "$@"; do
    label=${arg%%=*} bin=${arg#*=}
    run "$label" "$bin" 1
    run "$label" "$bin" 20
done

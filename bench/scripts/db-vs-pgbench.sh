#!/usr/bin/env bash
# hearth's PostgreSQL client (`hearth-bench db`) against pgbench doing the
# same event INSERT, on a throwaway cluster started and removed by this
# script. Durability stays on (fsync, synchronous_commit = on).
#
# Usage: bench/scripts/db-vs-pgbench.sh            (as root or as postgres)
# Env:   DURATION=10 WARMUP=2 CONCURRENCY=64 PGBIN=/usr/lib/postgresql/15/bin
#        EXTRA_ARGS="--gc-max-in-flight 2 ..."  (passed to hearth-bench db)
#        FSYNC_TEST=1  also run pg_test_fsync (about 15 s) on the data disk
#        PGBENCH=0     skip pgbench (e.g. for a GroupCommitConfig sweep)
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-64}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
EXTRA_ARGS=${EXTRA_ARGS:-}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

# PostgreSQL refuses to run as root: run its tools as the postgres user.
if [ "$(id -u)" = 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
    PGUSER_OS=postgres
else
    as_pg() { "$@"; }
    PGUSER_OS=$(id -un)
fi

# A port nobody listens on.
PORT=
for p in $(seq 55432 55532); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }

BASE=$(mktemp -d /tmp/hearth-dbbench.XXXXXX)
chmod 0755 "$BASE"
chown "$PGUSER_OS" "$BASE"
DATA=$BASE/data
SOCK=$BASE

cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$BASE"
}
trap cleanup EXIT INT TERM

echo "== machine"
echo "nproc: $(nproc)"
lscpu | grep 'Model name' || true
echo "kernel: $(uname -r)"
echo "postgres: $("$PGBIN/postgres" --version)"
echo "data dir: $DATA ($(df -h --output=source,fstype "$BASE" | tail -1 | tr -s ' '))"

as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
if [ -f "$REPO/tuning/postgresql.conf" ]; then
    cp "$REPO/tuning/postgresql.conf" "$DATA/hearth-tuning.conf"
    chown "$PGUSER_OS" "$DATA/hearth-tuning.conf"
    echo "include 'hearth-tuning.conf'" >>"$DATA/postgresql.conf"
    echo "tuning: tuning/postgresql.conf applied"
else
    echo "tuning: none (tuning/postgresql.conf not in this checkout)"
fi
cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
fsync = on
synchronous_commit = on
CONF
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$BASE/postgres.log" -w start >/dev/null

PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE TABLE IF NOT EXISTS bench_events (
    stream_ordering bigserial, room_id text NOT NULL, event_id text PRIMARY KEY,
    sender text NOT NULL, type text NOT NULL, json jsonb NOT NULL)"
echo "settings: $("${PSQL[@]}" -At -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
    WHERE name IN ('synchronous_commit','fsync','wal_sync_method','commit_delay','commit_siblings','shared_buffers')")"

if [ "${FSYNC_TEST:-0}" = 1 ]; then
    echo "== pg_test_fsync (data disk)"
    as_pg "$PGBIN/pg_test_fsync" -s 1 -f "$DATA/fsync.test" | sed -n '/using one 8kB write/,/^$/p'
fi

echo "== build"
(cd "$REPO" && cargo build --release -q -p hearth-bench)
BENCH=$REPO/target/release/hearth-bench

URL="postgres://postgres@/postgres?host=$SOCK&port=$PORT"
echo "== hearth-bench db --duration $DURATION --warmup $WARMUP --concurrency $CONCURRENCY $EXTRA_ARGS"
# shellcheck disable=SC2086
"$BENCH" db --url "$URL" --duration "$DURATION" --warmup "$WARMUP" \
    --concurrency "$CONCURRENCY" $EXTRA_ARGS

# The same row as hearth-bench's insert: unique event id, one of 16 rooms,
# the event JSON; prepared statements like hearth's extended protocol.
# (pgbench reads any `:name` as a variable, even inside string literals,
# hence chr(58) for the ':' of server names.)
cat >"$BASE/insert.sql" <<'SQL'
\set ts random(1, 2000000000)
INSERT INTO bench_events (room_id, event_id, sender, type, json)
SELECT r, e, s, 'm.room.message',
       jsonb_build_object('event_id', e, 'room_id', r, 'sender', s,
           'type', 'm.room.message', 'origin_server_ts', :ts::bigint,
           'content', jsonb_build_object('msgtype', 'm.text',
               'body', 'The quick brown fox jumps over the lazy dog, a message of typical size.'))
FROM (SELECT '!room' || (:client_id::int % 16) || chr(58) || 'localhost' AS r,
             '$' || gen_random_uuid() || chr(58) || 'localhost' AS e,
             '@bench' || chr(58) || 'localhost' AS s) AS v;
SQL
chmod 0644 "$BASE/insert.sql"

# pgbench run: prints tps and latency percentiles from its per-transaction log.
run_pgbench() {
    local clients=$1 jobs=$2 label=$3
    "${PSQL[@]}" -c "TRUNCATE bench_events RESTART IDENTITY" -c "CHECKPOINT"
    local logdir=$BASE/pgbench-$label
    mkdir -p "$logdir"
    # Warm-up pass, not measured.
    if [ "$WARMUP" -gt 0 ]; then
        "$PGBIN/pgbench" -n -M prepared -f "$BASE/insert.sql" -c "$clients" -j "$jobs" \
            -T "$WARMUP" -h "$SOCK" -p "$PORT" -U postgres postgres >/dev/null
    fi
    (cd "$logdir" && "$PGBIN/pgbench" -n -M prepared -f "$BASE/insert.sql" -c "$clients" \
        -j "$jobs" -T "$DURATION" -l --log-prefix=tx -h "$SOCK" -p "$PORT" -U postgres \
        postgres >"$logdir/out.txt" 2>&1)
    local tps
    tps=$(grep -E '^tps' "$logdir/out.txt" | head -1 | awk '{print $3}')
    # Third field of each log line: transaction latency in microseconds.
    cat "$logdir"/tx.* | awk '{print $3}' | sort -n | awk -v label="$label" \
        -v clients="$clients" -v tps="$tps" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print label ": no transactions"; exit }
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            i999 = int(NR * 0.999); if (i999 < 1) i999 = 1
            printf "%-20s %7d %10.0f %8.3f %8.3f %8.3f %8.3f\n", label, clients, tps,
                v[i50] / 1000, v[i99] / 1000, v[i999] / 1000, v[NR] / 1000
        }'
}

if [ "${PGBENCH:-1}" = 0 ]; then exit 0; fi
echo "== pgbench, same INSERT (-M prepared, -T $DURATION after ${WARMUP} s warm-up)"
printf "%-20s %7s %10s %8s %8s %8s %8s\n" "run" "clients" "tps" "p50 ms" "p99 ms" "p999 ms" "max ms"
run_pgbench 1 1 "pgbench-c1"
run_pgbench "$CONCURRENCY" 2 "pgbench-c$CONCURRENCY"

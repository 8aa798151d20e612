#!/usr/bin/env bash
# Start the Synapse peer (its PostgreSQL cluster first) and wait until
# GET /_matrix/client/versions answers. Idempotent: a running peer is left alone.
#
#   bench/peers/synapse/start.sh [WORK_DIR]    env: SYNAPSE_PORT, SYNAPSE_START_TIMEOUT (120)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -f "$CONFIG" ] || die "$CONFIG missing: run setup.sh first"
pg_start

if pid="$(synapse_pid)"; then
    log "Synapse already running (pid $pid)"
else
    log "starting Synapse on $BASE_URL"
    # Own session (setsid) so a terminal's signals don't reach it; stop.sh ends it.
    cd "$SYN"
    setsid "$PY" -m synapse.app.homeserver -c "$CONFIG" \
        >>"$SYN/stdout.log" 2>&1 </dev/null &
    echo $! > "$PIDFILE"
fi

timeout="${SYNAPSE_START_TIMEOUT:-120}"
deadline=$(( $(date +%s) + timeout ))
until curl -fsS -o /dev/null "$BASE_URL/_matrix/client/versions" 2>/dev/null; do
    synapse_pid >/dev/null || die "Synapse exited; see $SYN/stdout.log and $SYN/homeserver.log"
    [ "$(date +%s)" -lt "$deadline" ] || die "no answer from $BASE_URL within ${timeout}s"
    sleep 0.5
done
log "Synapse answers on $BASE_URL (pid $(synapse_pid))"

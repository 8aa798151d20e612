#!/usr/bin/env bash
# Stop the Synapse peer (SIGTERM, then SIGKILL after 30 s) and its PostgreSQL
# cluster. Idempotent: stopping a stopped peer is fine.
#
#   bench/peers/synapse/stop.sh [WORK_DIR]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if pid="$(synapse_pid)"; then
    log "stopping Synapse (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        log "Synapse ignored SIGTERM for 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
else
    log "Synapse not running"
fi
rm -f "$PIDFILE"

[ -f "$PGDATA/PG_VERSION" ] && pg_stop
exit 0

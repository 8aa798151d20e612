# Shared settings for setup.sh / start.sh / stop.sh / smoke.sh (sourced, not run).
#
# Everything lives under one work dir so a peer can be wiped with `rm -rf`.
# Override with the first argument of each script or with SYNAPSE_WORK;
# ports with SYNAPSE_PORT (client HTTP) and SYNAPSE_PG_PORT (only names the
# unix socket file: the cluster listens on no TCP port).

set -euo pipefail

PEER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$PEER_DIR/../../.." && pwd)"

WORK="${1:-${SYNAPSE_WORK:-$PEER_DIR/.work}}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

PORT="${SYNAPSE_PORT:-18008}"
PG_PORT="${SYNAPSE_PG_PORT:-5432}"
FED_PORT="${SYNAPSE_FED_PORT:-}"
SERVER_NAME="localhost:${FED_PORT:-$PORT}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_USER_OS="postgres"          # PostgreSQL refuses to run as root
DB_NAME="synapse"
DB_ROLE="synapse"

VENV="$WORK/venv"
PY="$VENV/bin/python"
PGDATA="$WORK/pg/data"
PGRUN="$WORK/pg/run"           # unix socket directory
PGLOG="$WORK/pg/postgres.log"
SYN="$WORK/synapse"
CONFIG="$SYN/homeserver.yaml"
PIDFILE="$SYN/homeserver.pid"
BASE_URL="http://127.0.0.1:$PORT"

# Synapse runs `git describe` beside its own files to decorate its version; with
# the venv inside hearth's checkout it would report hearth's branch. Stop git at $WORK.
export GIT_CEILING_DIRECTORIES="$WORK"

log() { printf '[synapse-peer] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_pg() { runuser -u "$PG_USER_OS" -- "$@"; }

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

pg_start() {
    if pg_running; then log "PostgreSQL already running"; return 0; fi
    log "starting PostgreSQL ($PGDATA)"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 start >/dev/null
}

pg_stop() {
    if ! pg_running; then log "PostgreSQL not running"; return 0; fi
    log "stopping PostgreSQL"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
}

psql_admin() { as_pg "$PG_BIN/psql" -h "$PGRUN" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

synapse_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid; pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

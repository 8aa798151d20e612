#!/usr/bin/env bash
# Build a Synapse benchmark peer: virtualenv + pinned Synapse, a private
# PostgreSQL 15 cluster (unix socket only), a database, a signing key and
# homeserver.yaml rendered from homeserver.yaml.in. Idempotent: re-running keeps
# the cluster, the database and the secrets, and re-renders the config.
#
#   bench/peers/synapse/setup.sh [WORK_DIR]     (default bench/peers/synapse/.work)
#   env: SYNAPSE_PORT (18008), SYNAPSE_PG_PORT (5432), SYNAPSE_BCRYPT_ROUNDS (12),
#        SYNAPSE_FED_PORT (unset: no federation; set: server name localhost:FED_PORT
#        and a TLS federation listener there — use its own WORK dir, since a
#        server name cannot change under an existing database)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (PostgreSQL is run as the '$PG_USER_OS' user via runuser)"
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 binaries not found in $PG_BIN"
id "$PG_USER_OS" >/dev/null 2>&1 || die "no '$PG_USER_OS' system user"

# --- 1. virtualenv with the pinned Synapse ------------------------------------
if [ ! -x "$PY" ]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
log "pip install -r requirements.txt -c constraints.txt"
t0=$(date +%s)
"$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$PEER_DIR/requirements.txt" -c "$PEER_DIR/constraints.txt"
log "pip install took $(( $(date +%s) - t0 )) s"
(cd "$WORK" && "$PY" -c 'import synapse, psycopg2; print("synapse", synapse.__version__, "psycopg2", psycopg2.__version__)') >&2

# --- 2. PostgreSQL cluster ----------------------------------------------------------
# The postgres user must be able to reach the data dir: every parent needs o+x.
d="$WORK"
while [ "$d" != "/" ]; do
    runuser -u "$PG_USER_OS" -- test -x "$d" ||
        die "$d is not traversable by $PG_USER_OS (chmod o+x it, or pick another work dir)"
    d="$(dirname "$d")"
done
mkdir -p "$WORK/pg" "$PGRUN"
chown "$PG_USER_OS:" "$WORK/pg" "$PGRUN"
chmod 700 "$PGRUN"

if [ ! -f "$PGDATA/PG_VERSION" ]; then
    log "initdb $PGDATA (C locale, UTF8: Synapse requires C collation)"
    # trust auth is safe here: the cluster listens on no TCP port and its socket
    # directory is mode 0700 (only root and postgres can connect).
    as_pg "$PG_BIN/initdb" -D "$PGDATA" --locale=C -E UTF8 -U postgres \
        --auth-local=trust --auth-host=reject >/dev/null
fi

# Instance settings are rewritten on every setup; hearth's tuning file comes first
# so the per-instance lines after it win.
TUNING="$REPO_ROOT/tuning/postgresql.conf"
{
    echo "# --- written by bench/peers/synapse/setup.sh ---"
    if [ -f "$TUNING" ]; then
        echo "include '$TUNING'"
    fi
    echo "listen_addresses = ''"
    echo "port = $PG_PORT"
    echo "unix_socket_directories = '$PGRUN'"
    echo "unix_socket_permissions = 0700"
} > "$WORK/pg/instance.conf"
chown "$PG_USER_OS:" "$WORK/pg/instance.conf"
[ -f "$TUNING" ] && log "PostgreSQL includes $TUNING" || log "no $TUNING: PostgreSQL defaults"
grep -qF "include '$WORK/pg/instance.conf'" "$PGDATA/postgresql.conf" ||
    echo "include '$WORK/pg/instance.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null

was_running=0; pg_running && was_running=1
if [ $was_running -eq 1 ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w restart -l "$PGLOG" >/dev/null # pick up conf
else
    pg_start
fi

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_ROLE'")" != 1 ]; then
    log "creating role $DB_ROLE"
    psql_admin -c "CREATE ROLE $DB_ROLE LOGIN"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" != 1 ]; then
    log "creating database $DB_NAME"
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_ROLE ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
fi
[ $was_running -eq 1 ] || pg_stop

# --- 3. secrets, config, signing key --------------------------------------------------
mkdir -p "$SYN/media_store"
if [ ! -f "$SYN/secrets.env" ]; then
    {
        echo "REG_SECRET=$(openssl rand -hex 32)"
        echo "MACAROON_SECRET=$(openssl rand -hex 32)"
        echo "FORM_SECRET=$(openssl rand -hex 32)"
    } > "$SYN/secrets.env"
    chmod 600 "$SYN/secrets.env"
fi
# shellcheck disable=SC1091
source "$SYN/secrets.env"

render() { # template -> stdout
    sed -e "s|@PORT@|$PORT|g" \
        -e "s|@SYN@|$SYN|g" \
        -e "s|@PGRUN@|$PGRUN|g" \
        -e "s|@PG_PORT@|$PG_PORT|g" \
        -e "s|@DB_NAME@|$DB_NAME|g" \
        -e "s|@DB_ROLE@|$DB_ROLE|g" \
        -e "s|@REG_SECRET@|$REG_SECRET|g" \
        -e "s|@MACAROON_SECRET@|$MACAROON_SECRET|g" \
        -e "s|@FORM_SECRET@|$FORM_SECRET|g" \
        -e "s|@BCRYPT_ROUNDS@|${SYNAPSE_BCRYPT_ROUNDS:-12}|g" \
        -e "s|@SERVER_NAME@|$SERVER_NAME|g" \
        -e "s|@FED_PORT@|${FED_PORT:-}|g" \
        "$1"
}
render "$PEER_DIR/homeserver.yaml.in" > "$CONFIG"
if [ -n "${FED_PORT:-}" ]; then
    # Federation on loopback (hearth-bench fed-ingest): a self-signed TLS listener.
    if [ ! -f "$SYN/fed.crt" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$SYN/fed.key" -out "$SYN/fed.crt" 2>/dev/null
    fi
    render "$PEER_DIR/federation.yaml.in" >> "$CONFIG"
fi
render "$PEER_DIR/log.yaml.in" > "$SYN/log.yaml"
chmod 600 "$CONFIG"
if grep -q '@[A-Z_]*@' "$CONFIG" "$SYN/log.yaml"; then die "unreplaced placeholder in config"; fi

if [ ! -f "$SYN/signing.key" ]; then
    log "generating signing key"
    (cd "$SYN" && "$PY" -m synapse.app.homeserver -c "$CONFIG" --generate-keys >/dev/null)
fi
[ -f "$SYN/signing.key" ] || die "signing key was not generated"

log "ready: $WORK (server_name $SERVER_NAME). Next: start.sh"

# Shared by the federation benchmark scripts (source it): a free port, and
# a fresh hearth with a TLS federation listener on loopback (embedded
# PostgreSQL, its own data dir). Needs REPO, SHARDS, HEARTH_BIN.

free_port() {
    for p in $(seq "$1" $(($1 + 100))); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "no free port from $1" >&2; exit 1
}

# Starts hearth; sets H_PORT (client), H_FPORT (federation, server name
# localhost:$H_FPORT), H_PID and H_DIR. Waits until /versions answers.
start_hearth_fed() {
    H_PORT=$(free_port 18448); H_FPORT=$(free_port 18600)
    H_DIR=$(mktemp -d /tmp/hearth-fedbench.XXXXXX); chmod 0755 "$H_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$H_DIR/fed.key" -out "$H_DIR/fed.crt" 2>/dev/null
    # HEARTH_BIN must not reach hearth: every HEARTH_* variable is config.
    env -u HEARTH_BIN HEARTH_SERVER_NAME=localhost:$H_FPORT HEARTH_SHARDS=$SHARDS HEARTH_DATA_DIR=$H_DIR \
        HEARTH_LISTENERS__0__PORT=$H_PORT HEARTH_LISTENERS__0__ADDRESS=127.0.0.1 \
        HEARTH_LISTENERS__1__PORT=$H_FPORT HEARTH_LISTENERS__1__ADDRESS=127.0.0.1 \
        HEARTH_LISTENERS__1__KIND=federation \
        HEARTH_LISTENERS__1__TLS_CERTIFICATE=$H_DIR/fed.crt \
        HEARTH_LISTENERS__1__TLS_PRIVATE_KEY=$H_DIR/fed.key \
        HEARTH_FEDERATION__ALLOW_IP_RANGES='["127.0.0.0/8"]' \
        HEARTH_FEDERATION__VERIFY_PEER_TLS=false \
        HEARTH_LOG__ACCESS_LOG=false HEARTH_RATE_LIMITS__ENABLED=false \
        "$HEARTH_BIN" serve >"$H_DIR/hearth.log" 2>&1 &
    H_PID=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$H_PORT/_matrix/client/versions" >/dev/null && return
        sleep 0.1
    done
    echo "hearth did not answer; see $H_DIR/hearth.log" >&2
}

# Stops the hearth of start_hearth_fed, keeping its log as $1.
stop_hearth_fed() {
    kill -TERM "$H_PID"; wait "$H_PID" || true
    cp "$H_DIR/hearth.log" "$1" 2>/dev/null || true
    rm -rf "$H_DIR"
}

#!/usr/bin/env bash
# Check a started peer: /versions answers, and a user registers through the
# m.login.dummy user-interactive-auth flow (client-server API, "Account
# registration": first POST gets 401 + a session, the second completes it).
#
#   bench/peers/synapse/smoke.sh [WORK_DIR]    env: SYNAPSE_PORT
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

curl -fsS "$BASE_URL/_matrix/client/versions" | "$PY" -c \
    'import json,sys; v=json.load(sys.stdin)["versions"]; print("versions:", v[0], "..", v[-1])'

user="smoke$(date +%s%N)"
body="{\"username\":\"$user\",\"password\":\"smoke-pass-1\"}"
session="$(curl -sS -X POST -H 'Content-Type: application/json' -d "$body" \
    "$BASE_URL/_matrix/client/v3/register" |
    "$PY" -c 'import json,sys; r=json.load(sys.stdin); print(r["session"])')"
echo "UIA session: $session"
curl -fsS -X POST -H 'Content-Type: application/json' \
    -d "{\"username\":\"$user\",\"password\":\"smoke-pass-1\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$session\"}}" \
    "$BASE_URL/_matrix/client/v3/register" |
    "$PY" -c 'import json,sys; r=json.load(sys.stdin); assert r["access_token"]; print("registered:", r["user_id"])'

#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are present;
# install Debian/Ubuntu's `postgresql` package if they are not. hearth runs
# its own cluster from these binaries (the embedded default), and the tests
# start throwaway clusters with them.
set -euo pipefail

have_server() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}

if have_server; then
  exit 0
fi

echo "PostgreSQL server binaries not found: installing the 'postgresql' package" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q postgresql
# Debian starts a system cluster on install; hearth does not use it.
$SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
have_server || { echo "PostgreSQL installation failed" >&2; exit 1; }

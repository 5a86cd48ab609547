#!/usr/bin/env bash
# The one test command: sets up everything it needs on a fresh Debian machine, then runs the suite.
#   scripts/test.sh [pytest args...]
# - a virtualenv in .venv with llmproxy and its dev dependencies
# - Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (database `test`, trust auth):
#   started if installed but stopped, installed from Debian's packages if missing
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
wait_for() {  # wait_for SECONDS CMD...: poll until CMD succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}

# --- Python environment ---------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
log "installing llmproxy with dev dependencies"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import llmproxy, aiohttp, pytest' # fail loudly if the install did not work

# --- Redis ----------------------------------------------------------------------------
redis_up() { .venv/bin/python - <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}
if ! redis_up; then
  command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
  log "starting redis-server"
  mkdir -p /tmp/llmproxy-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/llmproxy-redis --logfile /tmp/llmproxy-redis/redis.log
  wait_for 20 redis_up || { echo "Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }
fi

# --- PostgreSQL -----------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! command -v pg_isready >/dev/null || ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing postgresql"; apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    log "allowing trust auth on 127.0.0.1 for the tests"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting postgresql $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null \
    || as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  wait_for 30 pg_up || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  log "creating database test"
  psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
fi

# --- Chromium (the admin UI's browser test drives Debian's build through Playwright) ------
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium"; apt_install chromium
fi
# systemd-analyze verifies the unit files in tests/e2e/test_daemon.py
if ! command -v systemd-analyze >/dev/null 2>&1; then
  log "installing systemd (for systemd-analyze)"; apt_install systemd
fi

# nginx: the load balancer of tests/e2e/test_cluster.py (run by the test itself, in the foreground,
# with its own config), and the `nginx -t` of tests/integration/test_deploy_compose.py
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx"; apt_install nginx
fi
# The docs' shell blocks run in tests/e2e/test_docs.py on a scratch copy of this machine, whose
# apt-get installs nothing but checks the packages the docs name are here; curl and ip it uses itself
missing=()
for package in python3 python3-venv redis-server logrotate postgresql curl iproute2; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} (for the docs' walk-throughs)"; apt_install "${missing[@]}"
fi

# --- the suite --------------------------------------------------------------------------
log "running the test suite"
exec .venv/bin/python -m pytest "$@"

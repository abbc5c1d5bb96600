#!/usr/bin/env bash
# Start a Redis server of its own on loopback for Apportion's replica tests (Socket.IO events
# across servers, docs/operations.md), without systemd, as the user redis, in STATE (default
# /var/lib/apportion-redis). Installs Debian's redis-server with apt-get when missing. Idempotent:
# a server already running from STATE is left as it is. Stop it with scripts/redis_down.sh (by its
# pid file). Root only.
#
# The server asks for a random password, kept in its config file (0600, never on a command line)
# and with the URL in STATE/url (0600, root's): redis://:<password>@127.0.0.1:<port>/0. Only
# 127.0.0.1 is listened on; nothing is persisted.
#
#   APPORTION_REDIS_STATE  the server's directory (default /var/lib/apportion-redis)
#   APPORTION_REDIS_PORT   its TCP port on 127.0.0.1 (default 6390)
set -euo pipefail

STATE=${APPORTION_REDIS_STATE:-/var/lib/apportion-redis}
PORT=${APPORTION_REDIS_PORT:-6390}
die() { echo "redis_up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs the server as redis)"
[[ "$PORT" =~ ^[1-9][0-9]*$ ]] || die "APPORTION_REDIS_PORT must be a port number, got '$PORT'"

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends redis-server >/dev/null
fi
getent passwd redis >/dev/null || die "the user redis is missing (Debian's redis-server creates it)"

install -d -m 0711 "$STATE"
install -d -o redis -g redis -m 0700 "$STATE/data"
CONF=$STATE/redis.conf
PIDFILE=$STATE/data/redis.pid

running() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/comm" ] && grep -q redis "/proc/$pid/comm"
}

if ! [ -s "$CONF" ] || ! [ -s "$STATE/url" ]; then
  password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  umask 077
  cat > "$CONF" <<CONF
# scripts/redis_up.sh
bind 127.0.0.1
port $PORT
protected-mode yes
requirepass $password
daemonize yes
pidfile $PIDFILE
dir $STATE/data
logfile $STATE/data/redis.log
save ""
appendonly no
CONF
  chown redis:redis "$CONF"
  printf 'redis://:%s@127.0.0.1:%s/0\n' "$password" "$PORT" > "$STATE/url"
fi

if ! running; then
  runuser -u redis -- redis-server "$CONF" || die "redis-server did not start"
fi
# the password travels in the environment of redis-cli, never on its command line
REDISCLI_AUTH=$(sed -E 's#^redis://:([^@]*)@.*#\1#' "$STATE/url")
export REDISCLI_AUTH
for _ in $(seq 100); do
  if redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; then
    echo "Redis $(redis-server --version | sed -E 's/.* v=([^ ]*).*/\1/') on 127.0.0.1:$PORT; its URL is in $STATE/url"
    exit 0
  fi
  sleep 0.05
done
die "Redis did not answer on 127.0.0.1:$PORT: $(tail -n 5 "$STATE/data/redis.log" 2>/dev/null)"

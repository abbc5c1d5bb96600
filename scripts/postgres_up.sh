#!/usr/bin/env bash
# Start a PostgreSQL server of its own on loopback for Apportion's PostgreSQL tests and
# benchmarks (docs/operations.md), without systemd: initdb + pg_ctl as the user postgres, in
# STATE (default /var/lib/apportion-postgres). Installs Debian's `postgresql` with apt-get when no
# server binaries are found. Idempotent: a server already running from STATE is left as it is.
# Stop it with scripts/postgres_down.sh (by its pid file). Root only.
#
# The superuser `apportion` has a random password, written with the URL to STATE/url (0600,
# root's): `postgresql://apportion:<password>@127.0.0.1:<port>/apportion`. No secret is ever
# on a command line. Only 127.0.0.1 is listened on; password (scram) authentication only.
#
#   APPORTION_PG_STATE  the server's directory (default /var/lib/apportion-postgres)
#   APPORTION_PG_PORT   its TCP port on 127.0.0.1 (default 5440)
set -euo pipefail

STATE=${APPORTION_PG_STATE:-/var/lib/apportion-postgres}
PORT=${APPORTION_PG_PORT:-5440}
die() { echo "postgres_up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs the server as postgres)"
[[ "$PORT" =~ ^[1-9][0-9]*$ ]] || die "APPORTION_PG_PORT must be a port number, got '$PORT'"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] || ! [ -x "$(pg_bin)/initdb" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends postgresql >/dev/null
fi
BIN=$(pg_bin)
[ -x "$BIN/initdb" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
getent passwd postgres >/dev/null || die "the user postgres is missing (Debian's postgresql creates it)"

DATA=$STATE/data
SOCK=$STATE/socket
install -d -m 0711 "$STATE"
install -d -o postgres -g postgres -m 0700 "$DATA" "$SOCK"
pg() { runuser -u postgres -- "$@"; }

running() { pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

if ! [ -s "$DATA/PG_VERSION" ]; then
  password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  pwfile=$(mktemp "$STATE/pw.XXXXXX")
  printf '%s\n' "$password" > "$pwfile"
  chown postgres "$pwfile"; chmod 0400 "$pwfile"
  pg "$BIN/initdb" -D "$DATA" -U apportion --pwfile="$pwfile" --auth=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >> "$DATA/postgresql.conf" <<CONF
# scripts/postgres_up.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
max_connections = 200
CONF
  umask 077
  printf 'postgresql://apportion:%s@127.0.0.1:%s/apportion\n' "$password" "$PORT" > "$STATE/url"
fi

if ! running; then
  pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null \
    || die "the server did not start: $(tail -n 5 "$DATA/server.log" 2>/dev/null)"
fi
# the password travels in the environment of psql, never on its command line
PGPASSWORD=$(sed -E 's#^postgresql://apportion:([^@]*)@.*#\1#' "$STATE/url")
export PGPASSWORD PGPASSFILE=/dev/null
psql_tcp() { "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U apportion -d postgres "$@"; }
if ! psql_tcp -tAc "SELECT 1 FROM pg_database WHERE datname = 'apportion'" | grep -q 1; then
  psql_tcp -qc "CREATE DATABASE apportion" || die "could not create the database apportion"
fi
echo "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT; its URL is in $STATE/url"

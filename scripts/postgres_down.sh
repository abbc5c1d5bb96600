#!/usr/bin/env bash
# Stop the PostgreSQL server of scripts/postgres_up.sh (pg_ctl stop: it signals the pid in its
# data dir's postmaster.pid, never a process found by name). Its data stay in
# APPORTION_PG_STATE for the next start.
set -uo pipefail
STATE=${APPORTION_PG_STATE:-/var/lib/apportion-postgres}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -n "$BIN" ] && [ -s "$STATE/data/postmaster.pid" ]; then
  runuser -u postgres -- "$BIN/pg_ctl" -D "$STATE/data" -m fast -w stop >/dev/null 2>&1 \
    && echo "stopped PostgreSQL ($STATE)"
fi
exit 0

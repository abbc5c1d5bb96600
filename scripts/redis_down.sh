#!/usr/bin/env bash
# Stop the Redis server of scripts/redis_up.sh by its pid file (never by name).
set -uo pipefail
STATE=${APPORTION_REDIS_STATE:-/var/lib/apportion-redis}
PIDFILE=$STATE/data/redis.pid
if [ -s "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE")
  if [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/comm" ] && grep -q redis "/proc/$pid/comm"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null
    echo "stopped Redis ($pid)"
  fi
fi
exit 0

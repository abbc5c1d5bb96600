#!/usr/bin/env bash
# Stop what scripts/sge_up.sh started, by the daemons' pid files (never by name). Jobs still in
# the cell are deleted first (qdel) so that none outlives its execd.
set -uo pipefail
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default PATH="$PATH:/usr/sbin:/sbin"

pid_of() {  # pid_of FILE NAME: print the pid in FILE if it is a live process named like NAME
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm" \
    && echo "$pid"
}

stop() {  # stop FILE NAME: SIGTERM, wait up to 15 s, then SIGKILL
  local pid
  if pid=$(pid_of "$1" "$2"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if pid_of "$1" "$2" >/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
    echo "stopped $2 ($pid)"
  fi
}

if pid_of /var/spool/gridengine/qmaster/qmaster.pid sge_qmaster >/dev/null; then
  jobs=$(qstat -u '*' 2>/dev/null | awk 'NR > 2 {print $1}')
  # shellcheck disable=SC2086
  [ -n "$jobs" ] && qdel -f $jobs >/dev/null 2>&1
fi
for f in /var/spool/gridengine/execd/*/execd.pid; do [ -e "$f" ] && stop "$f" sge_execd; done
stop /var/spool/gridengine/qmaster/qmaster.pid sge_qmaster
exit 0

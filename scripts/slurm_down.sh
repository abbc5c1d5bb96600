#!/usr/bin/env bash
# Stop what scripts/slurm_up.sh started, by the pid files in SLURM_STATE_DIR (never by name).
# Jobs still in the cluster are cancelled first so that no job step outlives its slurmd.
# A munged that was already running before slurm_up.sh (no pid file in the state dir) is left alone.
set -uo pipefail
STATE=${SLURM_STATE_DIR:-/tmp/apportion-slurm}
export PATH="$PATH:/usr/sbin:/sbin"

pid_of() {  # pid_of FILE NAME: print the pid in FILE if it is a live process named like NAME
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm" \
    && echo "$pid"
}

stop() {  # stop FILE NAME: SIGTERM, wait up to 10 s, then SIGKILL; remove the pid file
  local pid
  if pid=$(pid_of "$1" "$2"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if pid_of "$1" "$2" >/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
    echo "stopped $2 ($pid)"
  fi
  rm -f "$1"
}

if pid_of "$STATE/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi
for f in "$STATE"/slurmd-*.pid; do [ -e "$f" ] && stop "$f" slurmd; done
stop "$STATE/slurmctld.pid" slurmctld
stop "$STATE/slurmdbd.pid" slurmdbd
stop "$STATE/mariadb/mariadbd.pid" mariadbd
stop "$STATE/munge/munged.pid" munged
exit 0

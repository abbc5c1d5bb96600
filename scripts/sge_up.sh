#!/usr/bin/env bash
# Start a single-host Son of Grid Engine 8.1.9 (Debian's gridengine-*) without systemd, for the
# sge adapter's tests: one queue all.q on this host, jobs of users from uid/gid 100 up, the
# scheduler every second. Installs the packages with apt-get when missing. Idempotent: daemons
# already running are left as they are. Stop it with scripts/sge_down.sh (by pid file). Root only.
#
#   SGE_SLOTS   slots of all.q (default 4)
set -euo pipefail

SLOTS=${SGE_SLOTS:-4}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid

die() { echo "sge_up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
[[ "$SLOTS" =~ ^[1-9][0-9]*$ ]] || die "SGE_SLOTS must be a positive integer, got '$SLOTS'"
export PATH="$PATH:/usr/sbin:/sbin"

if ! [ -x /usr/sbin/sge_qmaster ] || ! [ -x /usr/sbin/sge_execd ] || ! command -v qsub >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends \
    gridengine-master gridengine-exec gridengine-client >/dev/null
fi

# pid_alive FILE NAME: the pid in FILE is a live process whose command name contains NAME
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm"
}

HOST=$(hostname)
[[ "$HOST" =~ ^[A-Za-z0-9.-]+$ ]] || die "this host's name '$HOST' is not one SGE takes"
# 127.0.0.1 resolves to localhost before this host's name: SGE must take the two as one host
echo "$HOST" > "$COMMON/act_qmaster"
echo "$HOST localhost" > "$COMMON/host_aliases"

if ! pid_alive "$QMASTER_PID" sge_qmaster; then
  /usr/sbin/sge_qmaster
  for _ in $(seq 100); do qconf -sh >/dev/null 2>&1 && break; sleep 0.1; done
  qconf -sh >/dev/null 2>&1 || die "sge_qmaster did not answer; see /var/spool/gridengine/qmaster/messages"
fi

# qconf edits through $EDITOR: a script that rewrites the file it is given (sed, no shell input)
EDITS=$(mktemp -d)
trap 'rm -rf "$EDITS"' EXIT
edit_with() {  # edit_with NAME SED-EXPRESSION...: an EDITOR script applying the expressions
  local script="$EDITS/$1"; shift
  { echo '#!/bin/sh'; printf 'sed -i'; printf " -e '%s'" "$@"; echo ' "$1"'; } > "$script"
  chmod 0755 "$script"
  echo "$script"
}

qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null
# job users from uid/gid 100 (the job users are system users); the scheduler every second
EDITOR=$(edit_with conf 's/^min_uid .*/min_uid 100/' 's/^min_gid .*/min_gid 100/') qconf -mconf >/dev/null
EDITOR=$(edit_with sched 's/^schedule_interval .*/schedule_interval 0:0:1/' \
  's/^flush_submit_sec .*/flush_submit_sec 1/' 's/^flush_finish_sec .*/flush_finish_sec 1/') \
  qconf -msconf >/dev/null

EXECD_PID=/var/spool/gridengine/execd/localhost/execd.pid
if ! pid_alive "$EXECD_PID" sge_execd && ! pid_alive "/var/spool/gridengine/execd/$HOST/execd.pid" sge_execd; then
  /usr/sbin/sge_execd
fi

# parallel environment "smp": a job's vCPUs as slots of one host (qsub -pe smp N)
if ! qconf -spl 2>/dev/null | grep -qx smp; then
  printf '%s\n' "pe_name smp" "slots 9999" "user_lists NONE" "xuser_lists NONE" \
    "start_proc_args NONE" "stop_proc_args NONE" 'allocation_rule $pe_slots' \
    "control_slaves FALSE" "job_is_first_task TRUE" "urgency_slots min" \
    "accounting_summary FALSE" "qsort_args NONE" > "$EDITS/smp.pe"
  qconf -Ap "$EDITS/smp.pe" >/dev/null
fi

if ! qconf -sql 2>/dev/null | grep -qx all.q; then
  EDITOR=$(edit_with queue 's/^qname .*/qname all.q/' "s/^hostlist .*/hostlist $HOST/" \
    "s/^slots .*/slots $SLOTS/" 's/^pe_list .*/pe_list NONE/') qconf -aq >/dev/null
fi
qconf -mattr queue pe_list smp all.q >/dev/null 2>&1 || true  # also a queue made before it
qmod -cq all.q >/dev/null 2>&1 || true  # a queue left in error by an earlier run

for _ in $(seq 150); do
  qstat -f 2>/dev/null | grep -q "^all.q@" && qhost 2>/dev/null | grep -q "^$HOST " \
    && ! qhost 2>/dev/null | awk -v h="$HOST" '$1 == h && $7 == "-" {bad=1} END {exit !bad}' && break
  sleep 0.2
done
qstat -f | grep -q "^all.q@" || die "queue all.q did not come up; see /var/spool/gridengine/qmaster/messages"
echo "sge up: all.q on $HOST with $SLOTS slots (SGE_ROOT=$SGE_ROOT)"

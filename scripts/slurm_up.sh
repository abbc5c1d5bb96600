#!/usr/bin/env bash
# Start a single-host Slurm 22.05 (Debian slurm-wlm + munge) with fake GPU nodes, without systemd.
#
#   SLURM_STATE_DIR  where config copies, spool, logs, pid files and fake GPU devices live
#                    (default /tmp/apportion-slurm)
#   SLURM_NODES      number of fake nodes n1..nN (default 3), each one `slurmd -N nX` on its own port
#   SLURM_GPUS       fake GPUs per node (default 4; character devices made with mknod, major 195)
#   SLURM_CPUS       CPUs advertised per node (default 8)
#   SLURM_MEM        memory (MB) advertised per node (default 8000)
#   SLURM_CTLD_PORT  slurmctld port (default 6817); slurmd of node nX listens on 17000+X
#   SLURM_ACCOUNTING none (default) or slurmdbd: also a MariaDB (socket only, its data in the
#                    state dir) and slurmdbd on 127.0.0.1:6819, so that sacct and sshare work,
#                    with priority/multifactor and fair share (DEPTH_OBLIVIOUS: 2^(-U/S) per
#                    account), GPU-seconds as usage (TRESBillingWeights GRES/gpu=1), and:
#   SLURM_HALF_LIFE  PriorityDecayHalfLife, minutes (default 10080, a week)
#   SLURM_MAX_AGE    PriorityMaxAge, minutes (default 10080)
#   SLURM_WEIGHT_FAIRSHARE, SLURM_WEIGHT_AGE  PriorityWeightFairshare (10000), PriorityWeightAge (100)
#
# Installs slurm-wlm and munge with apt-get when missing. Idempotent: when the daemons of this state
# dir are already running with the same configuration, it only starts what is missing and waits.
# The configuration is written to $SLURM_STATE_DIR/etc and copied to /etc/slurm (where every Slurm
# client looks); an /etc/slurm/slurm.conf not written by this script is never overwritten.
# Stop everything with scripts/slurm_down.sh (by pid file). Must run as root.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/apportion-slurm}
NNODES=${SLURM_NODES:-3}
GPUS=${SLURM_GPUS:-4}
CPUS=${SLURM_CPUS:-8}
MEM=${SLURM_MEM:-8000}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
ACCOUNTING=${SLURM_ACCOUNTING:-none}
HALF_LIFE=${SLURM_HALF_LIFE:-10080}
MAX_AGE=${SLURM_MAX_AGE:-10080}
WEIGHT_FAIRSHARE=${SLURM_WEIGHT_FAIRSHARE:-10000}
WEIGHT_AGE=${SLURM_WEIGHT_AGE:-100}
DBD_PORT=6819
MARKER="# written by apportion scripts/slurm_up.sh"

die() { echo "slurm_up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
[[ "$STATE" =~ ^/[A-Za-z0-9_./-]+$ ]] || die "SLURM_STATE_DIR must be an absolute path of [A-Za-z0-9_./-]"
for v in NNODES GPUS CPUS MEM CTLD_PORT HALF_LIFE MAX_AGE WEIGHT_FAIRSHARE WEIGHT_AGE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ "$ACCOUNTING" =~ ^(none|slurmdbd)$ ]] || die "SLURM_ACCOUNTING must be none or slurmdbd, got '$ACCOUNTING'"

# --- packages -------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1 \
  || ! [ -x /usr/sbin/munged ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends slurm-wlm munge >/dev/null
fi
if [ "$ACCOUNTING" = slurmdbd ] && { ! [ -x /usr/sbin/slurmdbd ] || ! [ -x /usr/sbin/mariadbd ]; }; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends slurmdbd mariadb-server >/dev/null
fi

# pid_alive FILE NAME: the pid in FILE is a live process whose command name contains NAME
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm"
}

install -d -m 0755 "$STATE" "$STATE/etc" "$STATE/log" "$STATE/ctld" "$STATE/fakegpu"

# --- munge ------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge "$STATE/munge"
if ! munge -n >/dev/null 2>&1; then
  # Only a munged started here gets its pid file in the state dir (and is stopped by slurm_down.sh).
  runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/munge/munged.log"
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n >/dev/null 2>&1 || die "munged did not start; see $STATE/munge/munged.log"
fi

# --- fake GPUs: Slurm drops file-less gpu GRES and rejects plain files, so character devices ---
for i in $(seq 0 $((GPUS - 1))); do
  [ -c "$STATE/fakegpu/nvidia$i" ] || mknod "$STATE/fakegpu/nvidia$i" c 195 "$i"
done
for n in $(seq 1 "$NNODES"); do install -d "$STATE/spool/n$n"; done

# --- configuration ----------------------------------------------------------------------------
if [ "$ACCOUNTING" = slurmdbd ]; then
  ACCOUNTING_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
PriorityType=priority/multifactor
PriorityFlags=DEPTH_OBLIVIOUS
PriorityCalcPeriod=1
PriorityDecayHalfLife=$HALF_LIFE
PriorityMaxAge=$MAX_AGE
PriorityWeightFairshare=$WEIGHT_FAIRSHARE
PriorityWeightAge=$WEIGHT_AGE"
  BILLING=" TRESBillingWeights=CPU=0,GRES/gpu=1"
else
  ACCOUNTING_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  BILLING=""
fi
NEW="$STATE/etc/slurm.conf.new"
cat > "$NEW" <<CONF
$MARKER (state $STATE)
ClusterName=apportion
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=100
GresTypes=gpu
$ACCOUNTING_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
# finished jobs stay visible in squeue/scontrol for an hour (no slurmdbd, so no sacct)
MinJobAge=3600
InactiveLimit=0
KillWait=2
Waittime=0
CONF
for n in $(seq 1 "$NNODES"); do
  echo "NodeName=n$n NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((17000 + n)) CPUs=$CPUS" \
    "Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN" >> "$NEW"
done
cat >> "$NEW" <<CONF
PartitionName=cpu Nodes=n[1-$NNODES] Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=n[1-$NNODES] MaxTime=INFINITE State=UP$BILLING
CONF
GRES_NEW="$STATE/etc/gres.conf.new"
printf '%s\nAutoDetect=off\nNodeName=n[1-%s] Name=gpu File=%s/fakegpu/nvidia[0-%s]\n' \
  "$MARKER" "$NNODES" "$STATE" $((GPUS - 1)) > "$GRES_NEW"

if pid_alive "$STATE/slurmctld.pid" slurmctld; then
  if ! cmp -s "$NEW" "$STATE/etc/slurm.conf" || ! cmp -s "$GRES_NEW" "$STATE/etc/gres.conf"; then
    die "Slurm of $STATE is running with another configuration: run scripts/slurm_down.sh first"
  fi
fi
if [ -e /etc/slurm/slurm.conf ] && ! grep -q "^$MARKER" /etc/slurm/slurm.conf; then
  die "/etc/slurm/slurm.conf exists and was not written by this script; refusing to overwrite it"
fi
mv "$NEW" "$STATE/etc/slurm.conf"
mv "$GRES_NEW" "$STATE/etc/gres.conf"
install -d /etc/slurm
cp "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf.tmp && mv /etc/slurm/slurm.conf.tmp /etc/slurm/slurm.conf
cp "$STATE/etc/gres.conf" /etc/slurm/gres.conf.tmp && mv /etc/slurm/gres.conf.tmp /etc/slurm/gres.conf

# --- accounting: MariaDB (socket only, data in the state dir) and slurmdbd -----------------------
if [ "$ACCOUNTING" = slurmdbd ]; then
  DB="$STATE/mariadb"
  if [ ! -d "$DB/data/mysql" ]; then
    install -d -o mysql -g mysql -m 0750 "$DB" "$DB/data"
    mariadb-install-db --user=mysql --datadir="$DB/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed; see $STATE/log/mariadb-install.log"
  fi
  install -d -o mysql -g mysql -m 0750 "$DB"
  if ! pid_alive "$DB/mariadbd.pid" mariadbd; then
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$DB/data" --socket="$DB/mysqld.sock" \
      --skip-networking --pid-file="$DB/mariadbd.pid" --log-error="$STATE/log/mariadb.err" \
      --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    for _ in $(seq 150); do mariadb-admin --socket="$DB/mysqld.sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
    mariadb-admin --socket="$DB/mysqld.sock" ping >/dev/null 2>&1 || die "MariaDB did not start; see $STATE/log/mariadb.err"
  fi
  # slurmdbd reaches MariaDB through its socket as root (unix_socket authentication): no password
  DBD_NEW="$STATE/etc/slurmdbd.conf.new"
  cat > "$DBD_NEW" <<CONF
$MARKER (state $STATE)
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
CONF
  if [ -e /etc/slurm/slurmdbd.conf ] && ! grep -q "^$MARKER" /etc/slurm/slurmdbd.conf; then
    die "/etc/slurm/slurmdbd.conf exists and was not written by this script; refusing to overwrite it"
  fi
  mv "$DBD_NEW" "$STATE/etc/slurmdbd.conf"
  install -d /etc/slurm
  install -m 0600 "$STATE/etc/slurmdbd.conf" /etc/slurm/slurmdbd.conf
  if ! pid_alive "$STATE/slurmdbd.pid" slurmdbd; then
    MYSQL_UNIX_PORT="$DB/mysqld.sock" slurmdbd  # the client library's socket: ours
  fi
  for _ in $(seq 150); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
  sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd did not answer; see $STATE/log/slurmdbd.log"
fi

# --- daemons (each daemonizes itself and writes its pid file into $STATE) ----------------------
if ! pid_alive "$STATE/slurmctld.pid" slurmctld; then
  slurmctld -i
fi
for n in $(seq 1 "$NNODES"); do
  pid_alive "$STATE/slurmd-n$n.pid" slurmd || slurmd -N "n$n"
done

ready=0
for _ in $(seq 150); do
  # %t is the compact state; idle/mix/alloc without a suffix (* not responding, ~ powered off)
  ready=$(sinfo -h -N -p cpu -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)$' || true)
  [ "$ready" -ge "$NNODES" ] && break
  sleep 0.2
done
if [ "$ready" -lt "$NNODES" ]; then
  sinfo -N || true
  tail -20 "$STATE/log/slurmctld.log" || true
  die "only $ready of $NNODES nodes became ready"
fi
echo "slurm up: $NNODES nodes ready, $GPUS GPUs each, state in $STATE"

#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the integration test (tests/test_slurm.py).
#
#   tests/slurm/cluster.sh install   # apt-get install the Debian packages when missing
#   tests/slurm/cluster.sh start     # install if needed, write the config, start the daemons
#   tests/slurm/cluster.sh status    # daemons alive? node state
#   tests/slurm/cluster.sh stop      # stop every daemon this script started, by PID
#
# Debian 12's slurm-wlm 22.05 with munge, and slurmdbd on a private MariaDB for job accounting
# (the Snakemake SLURM executor reads job states with `sacct`; without accounting it waits
# forever). No systemd and no cgroups: proctrack/linuxproc, task/none. The node has fake GPUs
# (gres with File=/dev/null, ...) so that `--gpus=1` requests pass as on a real GPU cluster;
# jobs then see CUDA_VISIBLE_DEVICES but no CUDA and fall back to the CPU.
#
# Exit codes: 0 ok; 3 the cluster cannot be set up here (not root, no apt-get, install failed)
# -- the test skips on 3 unless DIFFREGIMES_SLURM=required; 1 a daemon failed to start.
#
# Everything but the config files lives in $STATE (default /tmp/diffregimes-slurm): logs, pid
# files, spool and MariaDB's data. The config goes to /etc/slurm (where sbatch, sacct and the
# jobs look for it); a slurm.conf not written by this script is never overwritten.
set -euo pipefail

STATE=${DIFFREGIMES_SLURM_STATE:-/tmp/diffregimes-slurm}
ETC=/etc/slurm
MARK="# written by diffregimes tests/slurm/cluster.sh"
CLUSTER=diffregimes
DB_PORT=${DIFFREGIMES_SLURM_DB_PORT:-36306}
DB_PASS=diffregimes-test
GPUS=${DIFFREGIMES_SLURM_GPUS:-2}
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sbatch sacct sinfo munged mariadbd mariadb-install-db)

log() { echo "cluster.sh: $*" >&2; }
unavailable() {
    log "cannot set up SLURM here: $*"
    exit 3
}

missing_binaries() {
    local b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" \
            >/dev/null 2>&1 || echo "$b"
    done
}

install() {
    [ -z "$(missing_binaries)" ] && return 0
    [ "$(id -u)" = 0 ] || unavailable "not root (needs apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || unavailable "no apt-get (install ${PACKAGES[*]})"
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d stops the packages from starting their own daemons (this script does).
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && created=1
    fi
    local ok=0
    { apt-get install -y -qq "${PACKAGES[@]}" >"${TMPDIR:-/tmp}/diffregimes-slurm-apt.log" 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}"; } \
            >>"${TMPDIR:-/tmp}/diffregimes-slurm-apt.log" 2>&1; } || ok=1
    [ $created = 1 ] && rm -f $policy
    [ $ok = 0 ] || unavailable "apt-get install failed (see ${TMPDIR:-/tmp}/diffregimes-slurm-apt.log)"
    [ -z "$(missing_binaries)" ] || unavailable "still missing: $(missing_binaries | xargs)"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    local i
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "timed out after ${seconds}s waiting for $what"
    return 1
}

write_config() {
    if [ -e $ETC/slurm.conf ] && ! grep -qF "$MARK" $ETC/slurm.conf; then
        unavailable "$ETC/slurm.conf exists and was not written by this script"
    fi
    mkdir -p "$ETC" "$STATE"/{ctld,spool,log,run,mysql}
    local cpus mem
    cpus=$(nproc)
    # Leave room for the OS; a node configured with more memory than it has is drained.
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    cat >$ETC/slurm.conf <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
# No cgroups (they would move processes out of the sandbox's cgroup).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobAcctGatherParams=OverMemoryKill
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job asking for more than the node has is refused at submission instead of pending forever.
EnforcePartLimits=ALL
DefMemPerCPU=1000
MinJobAge=300
# Accounting through slurmdbd (sacct); the cluster registers itself on first contact.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # Fake GPUs: one gres line per device file; without File= the node is invalid.
    {
        echo "$MARK"
        echo "AutoDetect=off"
        local files=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom) i
        for ((i = 0; i < GPUS; i++)); do
            echo "NodeName=localhost Name=gpu File=${files[$i]}"
        done
    } >$ETC/gres.conf
    # slurmdbd refuses a config readable by others.
    (
        umask 077
        cat >$ETC/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
}

start_munge() {
    pid_alive "$STATE/run/munged.pid" && return 0
    if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null >/dev/null 2>&1; then
        log "munged already running (not started by this script)"
        return 0
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key &&
        chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key; }
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
    wait_for 10 "munge credentials" munge -n
}

start_mariadb() {
    local sock=$STATE/mysql/mysqld.sock
    if ! pid_alive "$STATE/mysql/mariadb.pid"; then
        if [ ! -d "$STATE/mysql/data/mysql" ]; then
            mkdir -p "$STATE/mysql/data"
            chown -R mysql:mysql "$STATE/mysql"
            mariadb-install-db --user=mysql --datadir="$STATE/mysql/data" --skip-test-db \
                >"$STATE/log/mariadb-install.log" 2>&1
        fi
        chown -R mysql:mysql "$STATE/mysql"
        # A private server on its own socket and port: never the machine's own MariaDB.
        mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql/data" --socket="$sock" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$STATE/mysql/mariadb.pid" \
            --log-error="$STATE/mysql/mariadb.log" --innodb-buffer-pool-size=64M \
            --skip-name-resolve >/dev/null 2>&1 &
        disown
        wait_for 30 MariaDB mariadb --no-defaults -S "$sock" -u root -e "SELECT 1"
    fi
    mariadb --no-defaults -S "$sock" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

daemon() { # name, pid file, command...
    local name=$1 pidfile=$2
    shift 2
    pid_alive "$pidfile" && return 0
    "$@" || { log "$name failed to start; see $STATE/log/$name.log"; return 1; }
    wait_for 20 "$name" pid_alive "$pidfile" ||
        { tail -n 20 "$STATE/log/$name.log" >&2 || true; return 1; }
}

node_idle() { sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'; }

start() {
    install
    [ "$(id -u)" = 0 ] || unavailable "not root (the daemons run as root)"
    write_config
    start_munge
    start_mariadb
    daemon slurmdbd "$STATE/run/slurmdbd.pid" slurmdbd
    wait_for 30 "slurmdbd to answer" sacctmgr -n list cluster
    daemon slurmctld "$STATE/run/slurmctld.pid" slurmctld
    daemon slurmd "$STATE/run/slurmd.pid" slurmd -N localhost
    if ! wait_for 30 "the node to be idle" node_idle; then
        sinfo -N -l >&2 || true
        return 1
    fi
    # sacct must answer before any job runs (the executor waits forever otherwise).
    wait_for 30 "sacct" sacct -n -X -S now-1minutes
    log "up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m gres=%G')"
}

stop_pid() { # name, pid file
    local pidfile=$2 pid i
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        log "stopped $1 ($pid)"
    fi
    rm -f "$pidfile"
}

stop() {
    stop_pid slurmd "$STATE/run/slurmd.pid"
    stop_pid slurmctld "$STATE/run/slurmctld.pid"
    stop_pid slurmdbd "$STATE/run/slurmdbd.pid"
    stop_pid mariadb "$STATE/mysql/mariadb.pid"
    stop_pid munged "$STATE/run/munged.pid"
    # Without a controller, a slurm.conf makes every `scontrol` wait ~9 s for it, and the
    # SLURM executor plugin calls scontrol when Snakemake merely imports it: each later
    # snakemake run would pay that. `start` writes the config again.
    if [ -e $ETC/slurm.conf ] && grep -qF "$MARK" $ETC/slurm.conf; then
        rm -f $ETC/slurm.conf
    fi
}

status() {
    local name rc=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        local pidfile=$STATE/run/$name.pid
        [ $name = mariadb ] && pidfile=$STATE/mysql/mariadb.pid
        if pid_alive "$pidfile"; then
            echo "$name: running ($(cat "$pidfile"))"
        else
            echo "$name: stopped"
            rc=1
        fi
    done
    [ $rc = 0 ] && sinfo -N -o '%N %t cpus=%c mem=%m gres=%G'
    return $rc
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac

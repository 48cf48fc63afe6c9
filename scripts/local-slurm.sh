#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying `ablate --launcher slurm` and for the tests:
# munged + slurmctld + slurmd, every address 127.0.0.1, config, state and logs in one folder.
#
#   scripts/local-slurm.sh up        # start it (as root: slurmd runs jobs as their users), print SLURM_CONF
#   export SLURM_CONF=/tmp/gpt2kit-slurm/slurm.conf
#   sinfo; python -m gpt2kit ablate --config STUDY --launcher slurm --wait
#   scripts/local-slurm.sh status    # the daemons and the node's state
#   scripts/local-slurm.sh down      # stop the daemons (by their pid files)
#
# Needs Debian's slurm-wlm and munge packages (apt-get install slurm-wlm munge). The munge key is
# /etc/munge/munge.key (created if missing; mode 400, owned by munge), as on a real cluster.
# GPT2KIT_SLURM_DIR picks the folder (default /tmp/gpt2kit-slurm), GPT2KIT_SLURM_PORT the first of the two
# ports (default 6817: slurmctld; +1: slurmd).
set -euo pipefail

DIR="${GPT2KIT_SLURM_DIR:-/tmp/gpt2kit-slurm}"
PORT="${GPT2KIT_SLURM_PORT:-6817}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"  # its name must resolve: DDP ranks meet at the first node of SLURM_NODELIST
MUNGE_KEY=/etc/munge/munge.key

die() { echo "local-slurm: $*" >&2; exit 1; }

pid_alive() {  # PIDFILE
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() {  # NAME PIDFILE
    local name=$1 file=$2 pid
    if ! pid_alive "$file"; then
        rm -f "$file"
        return
    fi
    pid=$(cat "$file")
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "local-slurm: $name (pid $pid) did not stop in 5 s; killing it" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

write_conf() {
    local cpus mem_mb
    cpus=$(nproc --all)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # leave 10% to the system
    cat >"$CONF" <<EOF
# Written by scripts/local-slurm.sh: a one-node cluster on 127.0.0.1.
ClusterName=gpt2kit-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers and CI machines: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Seconds between the SIGTERM of a cancel/timeout/preemption and the SIGKILL: time to save a checkpoint.
KillWait=30
# Finished jobs stay visible to squeue/scontrol this long (there is no accounting database for sacct).
MinJobAge=600
SchedulerParameters=sched_interval=2
MessageTimeout=20
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

munge_key() {
    id munge >/dev/null 2>&1 || die "no 'munge' user: install the packages (apt-get install slurm-wlm munge)"
    if [[ ! -s $MUNGE_KEY ]]; then
        mkdir -p "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=128 status=none
    fi
    chown munge:munge "$(dirname "$MUNGE_KEY")" "$MUNGE_KEY"
    chmod 700 "$(dirname "$MUNGE_KEY")"
    chmod 400 "$MUNGE_KEY"
}

up() {
    [[ $(id -u) == 0 ]] || die "run it as root (slurmd starts jobs as their users; munged as 'munge')"
    for cmd in munged slurmctld slurmd sinfo; do
        command -v "$cmd" >/dev/null || die "'$cmd' not found: apt-get install slurm-wlm munge"
    done
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; then
        echo "local-slurm: already up; export SLURM_CONF=$CONF"
        return
    fi
    getent hosts "$NODE" >/dev/null || die "this machine's name '$NODE' does not resolve (add it to /etc/hosts): \
the ranks of a multi-task job meet at it"
    down >/dev/null
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
    chmod 755 "$DIR"
    chown munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"
    munge_key
    write_conf
    export SLURM_CONF=$CONF

    runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" --force \
        || die "munged did not start (see $DIR/munge/munged.log)"
    slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/slurmctld.log)"
    slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start (see $DIR/slurmd.log)"

    for _ in $(seq 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "local-slurm: up ($(nproc --all) CPUs); export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    sinfo >&2 || true
    tail -n 5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    die "the node did not become idle in 30 s (logs in $DIR)"
}

down() {
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munge/munged.pid"
    echo "local-slurm: down"
}

status() {
    local name file
    for name in munged slurmctld slurmd; do
        file="$DIR/$name.pid"
        [[ $name == munged ]] && file="$DIR/munge/munged.pid"
        if pid_alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
    done
    if [[ -f $CONF ]]; then
        echo "SLURM_CONF=$CONF"
        SLURM_CONF=$CONF sinfo 2>&1 || true
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac

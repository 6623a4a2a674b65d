#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM end-to-end test and for trying
# `snakemake --profile slurm` without a real cluster.
#
#   slurm/local-cluster.sh start    write the config, start munged, slurmctld and slurmd,
#                                   wait until the node is idle (already running: nothing to do)
#   slurm/local-cluster.sh stop     stop the daemons this script started
#   slurm/local-cluster.sh status   sinfo and squeue
#   slurm/local-cluster.sh env      the `export SLURM_CONF=...` line, for a shell that cannot
#                                   use /etc/slurm/slurm.conf (see below)
#
# Run as root (the daemons run as root, like in a container). Installs nothing: it needs
# Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`).
#
# The node "localhost" has all CPUs, ~90% of the memory and a fake GPU gres (gpu:N backed by
# /dev/null, so SLURM does the bookkeeping and sets CUDA_VISIBLE_DEVICES, and torch sees
# no GPU). Partitions: "main" (default) and "gpu", the same node in both. No accounting
# database, so `sacct` does not work: run snakemake with `--slurm-status-command squeue`
# (slurm/README.md).
#
# Where the SLURM commands find the config: the script writes /etc/slurm/slurm.conf (marked
# as ours), so sbatch/squeue/sinfo work in any shell. If /etc/slurm/slurm.conf already exists
# and is not ours (a real cluster's), it is left alone and the shell needs
# `eval "$(slurm/local-cluster.sh env)"`.
#
# Settings (environment):
#   FUTURESEG_SLURM_DIR   state folder: config, logs, spool, pid files [/tmp/futureseg-slurm]
#   FUTURESEG_SLURM_GPUS  fake GPUs on the node [2]
#   FUTURESEG_SLURM_WAIT  seconds to wait for the node to come up [60]
set -euo pipefail

STATE_DIR=${FUTURESEG_SLURM_DIR:-/tmp/futureseg-slurm}
GPUS=${FUTURESEG_SLURM_GPUS:-2}
WAIT_S=${FUTURESEG_SLURM_WAIT:-60}
CONF="$STATE_DIR/etc/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MARKER="# Written by futureseg slurm/local-cluster.sh"
MUNGE_SOCKET=/run/munge/munge.socket.2
NODE=localhost

die() {
    echo "local-cluster.sh: $*" >&2
    exit 1
}

require_tools() {
    local missing=()
    for tool in munged munge unmunge slurmctld slurmd sinfo squeue sbatch scontrol; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}: install them with" \
            "'apt-get install slurm-wlm munge' (Debian/Ubuntu)"
    fi
    [[ $(id -u) == 0 ]] || die "run as root: the SLURM daemons of this local cluster run as root"
}

# The slurm commands of this script read our config even when /etc/slurm is not ours.
export SLURM_CONF="$CONF"

pid_alive() { # pid_alive NAME: the daemon NAME whose id run/NAME.pid holds is running
    local pidfile="$STATE_DIR/run/$1.pid"
    # Compare the process name too: after a reboot the id may belong to another process.
    [[ -s $pidfile ]] && [[ $(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null) == "$1" ]]
}

write_config() {
    local cpus mem_mb gres_files
    cpus=$(nproc)
    # Leave ~10% of the memory to the system, as a real node does.
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$STATE_DIR"/{etc,log,run,spool/ctld,spool/d,dev}
    # One fake device per GPU, so SLURM hands out GPU indices (CUDA_VISIBLE_DEVICES,
    # SLURM_JOB_GPUS). slurmd wants character devices: copies of /dev/null.
    gres_files=()
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $STATE_DIR/dev/nvidia$i ]] || mknod -m 0666 "$STATE_DIR/dev/nvidia$i" c 1 3 \
            || die "cannot create the fake GPU device $STATE_DIR/dev/nvidia$i (mknod)"
        gres_files+=("$STATE_DIR/dev/nvidia$i")
    done

    cat >"$CONF.tmp" <<EOF
$MARKER: a single-node cluster on this machine.
# State, logs and this file live in $STATE_DIR; delete the folder after 'stop' to start afresh.
ClusterName=futureseg-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# A container has no usable cgroups: track processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
GresTypes=gpu
# No accounting database: sacct does not work, squeue does. Finished jobs stay visible to
# squeue and 'scontrol show job' for MinJobAge seconds (the Snakemake plugin polls squeue;
# the tests read the jobs of a run back from scontrol).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# Seconds between SIGTERM and SIGKILL at the time limit or on scancel: time to checkpoint.
KillWait=30
ReturnToService=2
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=2-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=gpu Nodes=$NODE MaxTime=2-00:00:00 DefaultTime=01:00:00 State=UP
EOF
    mv "$CONF.tmp" "$CONF"

    {
        echo "$MARKER: ${GPUS} fake GPUs (copies of /dev/null; jobs see CUDA_VISIBLE_DEVICES only)."
        echo "AutoDetect=off"
        for file in "${gres_files[@]}"; do
            echo "NodeName=$NODE Name=gpu File=$file"
        done
    } >"$STATE_DIR/etc/gres.conf"

    # Make the config the system one unless a foreign one is there.
    if [[ ! -e $ETC_CONF ]] || grep -qF "$MARKER" "$ETC_CONF"; then
        mkdir -p "$(dirname "$ETC_CONF")"
        cp "$CONF" "$ETC_CONF.tmp" && mv "$ETC_CONF.tmp" "$ETC_CONF"
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return # a munged is already answering on the default socket
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        echo "creating the munge key /etc/munge/munge.key"
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    # munged refuses to start unless its key and folders belong to the user it runs as.
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge
    chmod 0600 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            # 'stop' ends only a munged that this script started.
            cp /run/munge/munged.pid "$STATE_DIR/run/munged.pid"
            return
        fi
        sleep 0.1
    done
    die "munged did not answer on $MUNGE_SOCKET; its log: /var/log/munge/munged.log"
}

show_logs() {
    for log in "$STATE_DIR"/log/slurm{ctld,d}.{log,stdout}; do
        [[ -f $log ]] && { echo "--- last lines of $log"; tail -n 15 "$log"; }
    done >&2
}

start_daemon() { # start_daemon NAME ARGS...: run a SLURM daemon in the background, in its own session
    local name=$1
    shift
    pid_alive "$name" && return
    # In the foreground (-D) of a background process: its pid is ours to record at once, and
    # a daemon that dies at startup shows up in the wait loop below.
    setsid "$name" -D -f "$CONF" "$@" </dev/null >>"$STATE_DIR/log/$name.stdout" 2>&1 &
    echo $! >"$STATE_DIR/run/$name.pid"
}

node_state() { # the node's state as sinfo reports it; empty while slurmctld does not answer
    timeout 5 sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n 1 || true
}

start() {
    require_tools
    if pid_alive slurmctld && pid_alive slurmd; then
        echo "local SLURM cluster already running (state in $STATE_DIR)"
        print_env_hint
        return
    fi
    write_config
    start_munge
    # -i: ignore a state saved under another config (a changed CPU or GPU count).
    start_daemon slurmctld -i
    start_daemon slurmd -N "$NODE"
    local state="" deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        for daemon in slurmctld slurmd; do
            # kill -0, not pid_alive: a process just forked may not show its daemon's name yet.
            kill -0 "$(cat "$STATE_DIR/run/$daemon.pid")" 2>/dev/null \
                || { show_logs; die "$daemon exited; logs above"; }
        done
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) break ;;
            down* | drain* | fail*)
                # A node left down by an earlier run of the daemons: bring it back.
                scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle | mixed | allocated | completing) ;;
        *)
            show_logs
            die "node $NODE is '${state:-not reported by sinfo}' after ${WAIT_S}s, not idle;" \
                "logs above, config in $CONF" ;;
    esac
    echo "local SLURM cluster up: node $NODE with $(nproc) CPUs and gpu:$GPUS (state in $STATE_DIR)"
    print_env_hint
}

print_env_hint() {
    if [[ -e $ETC_CONF ]] && ! grep -qF "$MARKER" "$ETC_CONF"; then
        echo "$ETC_CONF belongs to another cluster and was left alone; in your shell run:"
        echo "  eval \"\$($0 env)\""
    fi
}

stop_daemon() { # stop_daemon NAME: end the daemon whose pid file this script's config names
    local pidfile="$STATE_DIR/run/$1.pid"
    pid_alive "$1" || { rm -f "$pidfile"; return 0; }
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    echo "local-cluster.sh: $1 (pid $pid) still running 10s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop() {
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    echo "local SLURM cluster stopped (state kept in $STATE_DIR)"
}

status() {
    command -v sinfo >/dev/null || die "sinfo not found: slurm-wlm is not installed"
    sinfo --long
    echo
    squeue --long
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2
        exit 2 ;;
esac

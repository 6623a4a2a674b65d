#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM end-to-end test and for trying
# `snakemake --profile slurm` without a real cluster.
#
#   slurm/local-cluster.sh start    write the config, start munged, slurmctld and slurmd,
#                                   wait until the node is idle (already running: nothing to do)
#   slurm/local-cluster.sh stop     stop the daemons this script started (and no others)
#   slurm/local-cluster.sh status   sinfo and squeue
#   slurm/local-cluster.sh env      the `export SLURM_CONF=...` line, for a shell that cannot
#                                   use /etc/slurm/slurm.conf (see below)
#
# Run as root (the daemons run as root, like in a container). Installs nothing: it needs
# Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`).
#
# The node "localhost" has all CPUs, ~90% of the memory and a fake GPU gres (gpu:N backed by
# /dev/null, so SLURM does the bookkeeping and sets CUDA_VISIBLE_DEVICES, and torch sees
# no GPU). One partition, "debug" (the default): slurm/config.yaml names no partition, so
# its jobs land in the cluster's default one, whatever its name. No accounting database,
# so `sacct` does not work: run snakemake with `--slurm-status-command squeue`
# (slurm/README.md).
#
# It never touches a process it did not start: it records the id and start time of each
# daemon it starts in $FUTURESEG_SLURM_DIR/run/NAME.ours; `stop` ends only those. `start`
# refuses (one line saying what and how to stop it) when a slurmctld or slurmd it did not
# start runs, or a SLURM port (6817 slurmctld, 6818 slurmd, 6819 slurmdbd) is taken.
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

start_time() { # start_time PID: the process's start time (clock ticks since boot); empty if gone
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # Field 22, counted after the command name in parentheses (which may hold spaces).
    stat=${stat##*) }
    echo "$stat" | awk '{print $20}'
}

record_pid() { # record_pid NAME PID: remember that this script started PID as daemon NAME
    echo "$2 $(start_time "$2")" >"$STATE_DIR/run/$1.ours"
}

recorded_pid() { # recorded_pid NAME: the id in run/NAME.ours (empty when none)
    local pidfile="$STATE_DIR/run/$1.ours"
    [[ -s $pidfile ]] && read -r pid _ <"$pidfile" && echo "$pid"
    return 0
}

pid_alive() { # pid_alive NAME: the daemon NAME that this script started is still running
    local pidfile="$STATE_DIR/run/$1.ours" pid started
    [[ -s $pidfile ]] || return 1
    read -r pid started <"$pidfile"
    # The same id, name and start time: after a reboot or a restart the id may belong to
    # another process, even another daemon of the same name, which is not ours to touch.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] && [[ -n $started && $(start_time "$pid") == "$started" ]]
}

processes_named() { # processes_named NAME: ids of the running processes called NAME
    local comm pid stat
    for comm in /proc/[0-9]*/comm; do
        [[ $(cat "$comm" 2>/dev/null) == "$1" ]] || continue
        pid=${comm#/proc/}
        pid=${pid%/comm}
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        [[ ${stat:0:1} == Z ]] || echo "$pid" # a zombie is an exited process not yet reaped
    done
    return 0
}

port_listening() { # port_listening PORT: some process listens on TCP PORT (IPv4 or IPv6)
    local hex
    hex=$(printf '%04X' "$1")
    # /proc/net/tcp{,6}: local address "ADDR:PORT" in hex, state 0A = LISTEN.
    awk -v port="$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 3) == port {found = 1}
        END {exit !found}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

refuse_if_taken() { # stop unless no SLURM daemon of someone else runs and the ports are free
    local daemon pid foreign=() ours port
    for daemon in slurmctld slurmd slurmdbd; do
        ours=$(pid_alive "$daemon" && recorded_pid "$daemon" || true)
        for pid in $(processes_named "$daemon"); do
            [[ $pid == "$ours" ]] || foreign+=("$daemon (pid $pid)")
        done
    done
    if ((${#foreign[@]})); then
        die "another SLURM is running here, not started by this script (state in $STATE_DIR):" \
            "${foreign[*]}; stop it first (its service: 'systemctl stop slurmctld slurmd'," \
            "or 'kill PID'; a local cluster of another state folder: FUTURESEG_SLURM_DIR=... $0 stop)"
    fi
    # Ports of daemons of this script that still run are theirs; the rest must be free.
    for port in 6817:slurmctld 6818:slurmd 6819:slurmdbd; do
        pid_alive "${port#*:}" && continue
        if port_listening "${port%%:*}"; then
            die "port ${port%%:*} (${port#*:}) is in use by another program; stop it first" \
                "('ss -ltnp sport = :${port%%:*}' shows which) or free the port"
        fi
    done
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
# A requeued job waits cred_expire + 1 s before it may start again (120 s by default): a
# trainer that requeues itself before its time limit (slurm/README.md) comes back within
# ~20 s here. It also bounds how long a job launch may take, seconds on one machine.
AuthInfo=cred_expire=20
ReturnToService=2
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
# One partition, named like no usual one, so a profile that names a partition fails here.
PartitionName=debug Nodes=$NODE Default=YES MaxTime=2-00:00:00 DefaultTime=01:00:00 State=UP
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
            record_pid munged "$(cat /run/munge/munged.pid)"
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
    record_pid "$name" $!
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
    refuse_if_taken
    write_config
    start_munge
    # -i: ignore a state saved under another config (a changed CPU or GPU count).
    start_daemon slurmctld -i
    start_daemon slurmd -N "$NODE"
    local state="" deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        for daemon in slurmctld slurmd; do
            # kill -0, not pid_alive: a process just forked may not show its daemon's name yet.
            kill -0 "$(recorded_pid "$daemon")" 2>/dev/null \
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
    local pidfile="$STATE_DIR/run/$1.ours"
    pid_alive "$1" || { rm -f "$pidfile"; return 0; }
    local pid
    pid=$(recorded_pid "$1")
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

#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests (Debian 12, slurm 22.05, run as root).
#
#   bash .ci/slurm_localhost.sh install      apt-get the packages unless slurmctld is already there
#   bash .ci/slurm_localhost.sh start DIR    write DIR/slurm.conf, start munged/slurmctld/slurmd,
#                                            wait until the node is idle (exit 3: binaries missing)
#   bash .ci/slurm_localhost.sh stop DIR     cancel jobs, stop slurmd/slurmctld (and munged if this
#                                            script started it), waiting for them to exit
#
# Client commands find the cluster through SLURM_CONF=DIR/slurm.conf, which the caller exports.
# Only one cluster per machine: the daemons use the default ports 6817/6818.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "slurm_localhost: $*" >&2; exit "${rc:-1}"; }
# Process helpers read /proc (procps may be missing) and count zombies as gone: not every
# container init reaps the daemons once they exit.
live() { local pid comm st; { read -r pid comm st _ </proc/"$1"/stat; } 2>/dev/null && [[ $st != Z ]]; }
alive() { [[ -s $1 ]] && live "$(cat "$1")"; }   # the pid file $1 names a live process
running() {   # PIDs of live processes named $1
    local f pid comm st
    for f in /proc/[0-9]*/stat; do
        { read -r pid comm st _ <"$f"; } 2>/dev/null && [[ $comm == "($1)" && $st != Z ]] && echo "$pid"
    done
    return 0
}

cmd=${1:-}
if [[ $cmd == install ]]; then
    command -v slurmctld >/dev/null && exit 0
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    # A fresh image may have no package lists yet: update only when the first try fails.
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
    exit 0
fi

[[ ($cmd == start || $cmd == stop) && $# -eq 2 ]] || die "usage: $0 install | start DIR | stop DIR"
if [[ $cmd == start ]]; then   # exit 3 lets tests skip on machines without SLURM
    for b in munged slurmctld slurmd sinfo sbatch; do
        command -v $b >/dev/null || rc=3 die "$b not found (run: bash $0 install)"
    done
fi
[[ $cmd == start ]] && mkdir -p "$2"
[[ -d $2 ]] || exit 0   # stop: nothing was started there
dir=$(cd "$2" && pwd)
export SLURM_CONF=$dir/slurm.conf

if [[ $cmd == stop ]]; then
    # Cancel leftover jobs and let them finish first: no slurmstepd outlives its slurmd, and
    # slurmd does not spend ~10 s retrying to tell a stopped slurmctld about them.
    if alive "$dir/slurmctld.pid"; then
        squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 50); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
    fi
    # Signal all daemons at once, then wait for them.
    pids=()
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        alive "$pidfile" && pids+=("$(cat "$pidfile")")
    done
    [[ ${#pids[@]} -gt 0 ]] || exit 0
    kill "${pids[@]}" 2>/dev/null || true
    # Wait up to 10 s until none is left (a zombie counts as gone: not every container init reaps).
    for _ in $(seq 100); do
        left=0; for pid in "${pids[@]}"; do live "$pid" && left=1; done
        [[ $left == 1 ]] || break
        sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
    rm -f "$dir"/*.pid
    exit 0
fi

# ---- start ----
fail() {   # show why, then stop whatever did start
    echo "slurm_localhost: $*" >&2
    tail -n 20 "$dir"/log/* >&2
    bash "$0" stop "$dir"
    exit 1
}
for d in slurmctld slurmd; do   # one cluster per machine: the ports are fixed
    [[ -z $(running $d) ]] || die "a $d is already running (pid $(running $d)); stop it first"
done

mkdir -p "$dir/state" "$dir/spool" "$dir/log"
host=$(cut -d. -f1 /proc/sys/kernel/hostname)   # what slurmd calls itself (= hostname -s)
mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # MiB, a bit below total
cat >"$SLURM_CONF" <<EOF
ClusterName=localhost
# Explicit 127.0.0.1 addresses: the short host name need not resolve on CI machines.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Cores only: with memory consumable each job would take the whole node's memory by default.
SelectTypeParameters=CR_Core
# Schedule at once instead of batching submissions for 3 s (the default): faster tests.
SchedulerParameters=batch_sched_delay=0
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# munged: reuse a running one (clients and daemons talk to its default socket), else start one
# and remember its pid so that `stop` stops only what we started.
if [[ -z $(running munged) ]]; then
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    munged --force --pid-file="$dir/munged.pid" </dev/null >>"$dir/log/munged.out" 2>&1 ||
        fail "munged did not start"
fi

# The daemons fork into the background; detach their stdio too so that a caller capturing
# our output (subprocess.run(capture_output=True)) does not wait for them.
slurmctld -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.out" 2>&1 || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmd.out" 2>&1 || fail "slurmd did not start"

for _ in $(seq 120); do   # up to 60 s
    [[ $(sinfo -h -N -o %t 2>/dev/null) == idle ]] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.5
done
fail "node not idle after 60 s; sinfo: $(sinfo -N 2>&1 | tail -n 1)"

#!/usr/bin/env bash
# Start a one-node SLURM on this machine (as root), for CI and for trying `compress --cluster slurm`
# on a workstation:
#   1. install Debian's slurmctld, slurmd, slurm-client and munge if they are missing;
#   2. write /etc/slurm/slurm.conf for this host's CPUs and memory (what `slurmd -C` sees), with
#      ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups: works in containers;
#      no cgroup.conf is written);
#   3. start munged, slurmctld and slurmd as root (no systemd needed) unless they already run;
#   4. wait until the node is idle, then print `sinfo`.
# Safe to run again: daemons already running are left alone (the configuration is rewritten only
# when it changes, and then the daemons are restarted). Needs root. Logs: /var/log/slurm/.
#
# Then, e.g.:
#   cat > ~/.config/dask/jobqueue.yaml <<EOF   (or pass the same through DASK_JOBQUEUE__SLURM__*)
#   jobqueue: {slurm: {cores: 1, memory: 2GiB, walltime: "01:00:00"}}
#   EOF
#   empcompress compress SRC DEST --cluster slurm --jobs 2
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "start-slurm.sh: run as root (it installs packages and starts the SLURM daemons)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    echo "installing slurmctld slurmd slurm-client munge"
    # another apt-get may hold dpkg's lock (CI's own section, a colleague's install): wait for it
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

host="$(hostname -s)"
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge

# ---- munge: a key, then the daemon (as the munge user when there is one)
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
if id munge >/dev/null 2>&1; then
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
fi
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || { echo "start-slurm.sh: munged does not answer" >&2; exit 1; }
fi

# ---- slurm.conf for this host: the node line is what slurmd itself detects (CPUs, sockets, cores,
# threads, RealMemory in MiB), less 5% of the memory for the system.
node_line="$(slurmd -C | head -1)"
real_memory="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
usable_memory=$((real_memory * 95 / 100))
node_line="$(sed "s/RealMemory=[0-9]*/RealMemory=${usable_memory}/; s/^NodeName=[^ ]*/NodeName=${host}/" \
    <<<"$node_line")"
new_conf="$(mktemp)"
cat >"$new_conf" <<EOF
# Written by empcompress scripts/start-slurm.sh: a one-node SLURM on ${host}.
ClusterName=empcompress
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups: processes are tracked through /proc, tasks are not bound (works inside containers)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# finished jobs stay visible to scontrol/squeue for 10 minutes (there is no accounting database)
MinJobAge=600
# a job past its time limit gets SIGTERM, then SIGKILL 5 s later
KillWait=5
OverTimeLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
${node_line} State=UNKNOWN
PartitionName=main Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
changed=1
if [ -f "$conf_dir/slurm.conf" ] && cmp -s "$new_conf" "$conf_dir/slurm.conf"; then
    changed=0
fi
if [ "$changed" = 1 ]; then
    install -m 0644 "$new_conf" "$conf_dir/slurm.conf"
    echo "wrote $conf_dir/slurm.conf: $node_line"
fi
rm -f "$new_conf"

# ---- the daemons (restarted when the configuration changed)
# running DAEMON: its pid file names a live process of that name (not a stale pid reused by another)
running() { [ -f "/run/$1.pid" ] && [ "$(cat "/proc/$(cat "/run/$1.pid")/comm" 2>/dev/null)" = "$1" ]; }
for daemon in slurmd slurmctld; do
    if [ "$changed" = 1 ] && running "$daemon"; then
        kill "$(cat "/run/$daemon.pid")"
        for _ in $(seq 50); do running "$daemon" || break; sleep 0.2; done
    fi
done
running slurmctld || slurmctld
running slurmd || slurmd

# ---- wait until the node takes jobs
for _ in $(seq 120); do
    state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
case "$state" in
    idle|mixed|allocated) ;;
    *)
        echo "start-slurm.sh: node $host is '$state', not idle; see /var/log/slurm/" >&2
        tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        exit 1
        ;;
esac
sinfo

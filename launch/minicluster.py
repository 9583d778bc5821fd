"""`python -m launch.minicluster up | down | status`: a real one-machine SLURM cluster.

munge, slurmctld and slurmd from Debian's `slurm-wlm` package, configured for this machine (one node
with all its cores, one default partition, no accounting). The tests use it to submit, signal, requeue
and time out real jobs; anyone can use it to try the SLURM path of this project on one machine.

`up` is idempotent: daemons already running are left alone. It needs root (the daemons run as root
and munge's key must belong to the munge user) and refuses to touch a slurm.conf it did not write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by launch.minicluster"
STATE = Path("/var/lib/slurm-minicluster")
LOGS = Path("/var/log/slurm-minicluster")
RUN = Path("/run/slurm-minicluster")
MUNGE_KEY = Path("/etc/munge/munge.key")
CTLD_PORT, SLURMD_PORT = 6817, 6818
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "scontrol")


class MiniclusterError(RuntimeError):
    pass


@dataclass
class Status:
    munged: bool
    slurmctld: bool
    slurmd: bool
    nodes: str  # sinfo's view, or why there is none

    @property
    def up(self) -> bool:
        usable = any(state in self.nodes for state in ("idle", "mix", "alloc"))
        return self.munged and self.slurmctld and self.slurmd and usable


def up(timeout: float = 60.0) -> Status:
    """Start munge, slurmctld and slurmd (those not running yet) and wait for the node to be usable."""
    _check_prerequisites()
    if not _running("munged"):
        _ensure_munge_key()
        _start(["runuser", "-u", "munge", "--", _which("munged")], "munged")
    if CONF.exists() and MARKER not in CONF.read_text():
        raise MiniclusterError(f"{CONF} exists and was not written by launch.minicluster: refusing to replace it")
    _write_conf()
    for directory in (STATE / "state", STATE / "spool", LOGS, RUN):
        directory.mkdir(parents=True, exist_ok=True)
    if not _running("slurmctld"):
        _check_port_free(CTLD_PORT, "slurmctld")
        _start([_which("slurmctld")], "slurmctld")
    if not _running("slurmd"):
        _check_port_free(SLURMD_PORT, "slurmd")
        _start([_which("slurmd")], "slurmd")
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = status()
        if current.up:
            return current
        if "down" in current.nodes or "drain" in current.nodes:
            subprocess.run(["scontrol", "update", f"nodename={socket.gethostname()}", "state=resume"],
                           capture_output=True)
        time.sleep(1)
    raise MiniclusterError(f"the node did not become idle within {timeout:.0f}s; sinfo says: {status().nodes}; "
                           f"logs: {LOGS}")


def down() -> Status:
    """Stop slurmd, slurmctld and munged (jobs still running are killed)."""
    for name in ("slurmd", "slurmctld", "munged"):
        subprocess.run(["pkill", "-x", name], capture_output=True)
    deadline = time.time() + 20
    while time.time() < deadline and any(_running(n) for n in ("slurmd", "slurmctld", "munged")):
        time.sleep(0.3)
    return status()


def status() -> Status:
    nodes = "no sinfo (slurm-wlm is not installed)"
    if shutil.which("sinfo"):
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %T %D %c"], capture_output=True, text=True, timeout=30)
        nodes = proc.stdout.strip() if proc.returncode == 0 else proc.stderr.strip() or "sinfo failed"
    return Status(_running("munged"), _running("slurmctld"), _running("slurmd"), nodes)


def slurm_conf_text(host: str, cpus: int, memory_mb: int) -> str:
    """Settings that work for one node in a container: no cgroups, no accounting, root as SlurmUser."""
    return f"""{MARKER}: a one-machine SLURM cluster for tests and trials.
ClusterName=minicluster
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
StateSaveLocation={STATE / 'state'}
SlurmdSpoolDir={STATE / 'spool'}
SlurmctldPidFile={RUN / 'slurmctld.pid'}
SlurmdPidFile={RUN / 'slurmd.pid'}
SlurmctldLogFile={LOGS / 'slurmctld.log'}
SlurmdLogFile={LOGS / 'slurmd.log'}
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _write_conf() -> None:
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024
    text = slurm_conf_text(socket.gethostname(), os.cpu_count() or 1, memory_mb)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    if not CONF.exists() or CONF.read_text() != text:
        CONF.write_text(text)
        if _running("slurmctld"):
            subprocess.run(["scontrol", "reconfigure"], capture_output=True)


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise MiniclusterError("the minicluster needs root: its daemons run as root and munge's key is owned by munge")
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise MiniclusterError(f"missing {', '.join(missing)}: install Debian's packages with "
                               "`apt-get update && apt-get install -y slurm-wlm munge`")


def _ensure_munge_key() -> None:
    """A key owned by munge, mode 400, and the directories munged insists on."""
    for directory in ("/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    if not MUNGE_KEY.exists() or MUNGE_KEY.stat().st_size == 0:
        MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)


def _check_port_free(port: int, daemon: str) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise MiniclusterError(f"port {port} is taken by another program: {daemon} cannot start")


def _start(cmd: List[str], name: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MiniclusterError(f"{name} failed to start: {proc.stderr.strip() or proc.stdout.strip()} "
                               f"(logs: {LOGS})")
    deadline = time.time() + 15
    while not _running(name):
        if time.time() > deadline:
            raise MiniclusterError(f"{name} exited right after starting; see its log in {LOGS}")
        time.sleep(0.2)


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def _which(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise MiniclusterError(f"{name} not found")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.minicluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    try:
        result = {"up": up, "down": down, "status": status}[args.action]()
    except MiniclusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"munged: {'running' if result.munged else 'stopped'}; slurmctld: "
          f"{'running' if result.slurmctld else 'stopped'}; slurmd: {'running' if result.slurmd else 'stopped'}")
    print(f"nodes: {result.nodes}")
    return 0 if args.action != "status" or result.up else 1


if __name__ == "__main__":
    sys.exit(main())

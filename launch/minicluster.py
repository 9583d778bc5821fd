"""`python -m launch.minicluster up [--nodes N] [--keep-jobs] | down | status`: a real SLURM cluster on one machine.

munge, slurmctld and one slurmd per node from Debian's `slurm-wlm` package, configured for this machine:
nodes `n1 ... nN`, each with all of the machine's cores, one default partition, no accounting. The nodes
are slurmd daemons side by side (`slurmd -N n2`), each on its own port; their names resolve to
127.0.0.1 through entries this module adds to /etc/hosts (and removes on `down`), because a job's
master address is the first host of its node list. A 2-node job thus runs its tasks on "two machines"
that SLURM schedules, signals and requeues as it would on a real cluster.

The tests use it to submit, signal, requeue and time out real multi-node jobs; anyone can use it to
try the SLURM path of this project on one machine. `up` is idempotent: with the same number of nodes,
daemons already running are left alone, and so are their jobs; with another number, the cluster is restarted.
A slurmctld that `up` starts starts clean: the jobs an earlier cluster left in its saved state (a running job
among them would hold its nodes) are not brought back, unless `--keep-jobs` asks for them, and then `up` names
them. It needs root (the daemons run as root, munge's key belongs to the munge user, and
/etc/hosts is edited) and refuses to touch a slurm.conf it did not write.
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

CONF = Path("/etc/slurm/slurm.conf")
HOSTS = Path("/etc/hosts")
MARKER = "# written by launch.minicluster"
STATE = Path("/var/lib/slurm-minicluster")
LOGS = Path("/var/log/slurm-minicluster")
RUN = Path("/run/slurm-minicluster")
MUNGE_KEY = Path("/etc/munge/munge.key")
CTLD_PORT, FIRST_SLURMD_PORT = 6817, 6818
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "scontrol")


class MiniclusterError(RuntimeError):
    pass


@dataclass
class Status:
    munged: bool
    slurmctld: bool
    slurmd: list[str]  # the nodes whose slurmd runs
    nodes: list[str]  # sinfo's view, a "name state cpus" line per node, or why there is none
    # Set by `up` where it started slurmctld and an earlier cluster had saved its state: that state's jobs were
    # dropped (`cleared`), or kept (--keep-jobs: `kept_jobs`, a squeue line each).
    cleared: bool = False
    kept_jobs: list[str] | None = None

    @property
    def up(self) -> bool:
        usable = [line for line in self.nodes if line.split()[1:2] and line.split()[1].rstrip("*") in
                  ("idle", "mixed", "allocated", "completing")]
        return self.munged and self.slurmctld and bool(self.slurmd) and len(usable) == len(self.slurmd)


def node_names(count: int) -> list[str]:
    return [f"n{i}" for i in range(1, count + 1)]


def up(nodes: int | None = None, timeout: float = 60.0, keep_jobs: bool = False) -> Status:
    """Start munge, slurmctld and a slurmd per node (those not running yet); wait until every node is usable.

    `nodes`: how many; default: as many as the cluster has now, else 1. `keep_jobs`: a slurmctld started here
    brings back the jobs of its saved state (by default it starts without them); a running one keeps its jobs.
    """
    nodes = nodes or len(_configured_nodes()) or 1
    if nodes < 1:
        raise MiniclusterError(f"--nodes must be at least 1, not {nodes}")
    _check_prerequisites()
    if not _running("munged"):
        _ensure_munge_key()
        _start(["runuser", "-u", "munge", "--", _which("munged")], "munged")
    if CONF.exists() and MARKER not in CONF.read_text():
        raise MiniclusterError(f"{CONF} exists and was not written by launch.minicluster: refusing to replace it")
    names = node_names(nodes)
    if _write_conf(names) and (_running("slurmctld") or _running("slurmd")):
        _stop_slurm()  # another set of nodes: slurmctld reads its node list only when it starts
    _map_node_names(names)
    for directory in (STATE / "state", LOGS, RUN, *(STATE / "spool" / n for n in names)):
        directory.mkdir(parents=True, exist_ok=True)
    saved = (STATE / "state" / "job_state").exists()  # an earlier slurmctld's jobs (none at the first start)
    started_ctld = not _running("slurmctld")
    if started_ctld:
        _check_port_free(CTLD_PORT, "slurmctld")
        _start([_which("slurmctld"), *slurmctld_flags(keep_jobs)], "slurmctld")
    for port, name in enumerate(names, start=FIRST_SLURMD_PORT):
        if not _slurmd_running(name):
            _check_port_free(port, f"slurmd of node {name}")
            _start([_which("slurmd"), "-N", name], f"slurmd -N {name}", lambda n=name: _slurmd_running(n))
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = status()
        if current.up:
            current.cleared = started_ctld and saved and not keep_jobs
            current.kept_jobs = _jobs() if started_ctld and saved and keep_jobs else None
            return current
        stuck = [line.split()[0] for line in current.nodes if any(s in line for s in ("down", "drain", "unk"))]
        if stuck:
            subprocess.run(["scontrol", "update", f"nodename={','.join(stuck)}", "state=resume"], capture_output=True)
        time.sleep(1)
    raise MiniclusterError(f"the nodes did not become idle within {timeout:.0f}s; sinfo says: "
                           f"{'; '.join(status().nodes)}; logs: {LOGS}")


def down() -> Status:
    """Stop every slurmd, slurmctld and munged this module started (jobs still running are killed)."""
    _stop_slurm()
    subprocess.run(["pkill", "-x", "munged"], capture_output=True)
    _wait_until(lambda: not _running("munged"), 20)
    _map_node_names([])
    return status()


def slurmctld_flags(keep_jobs: bool) -> list[str]:
    """slurmctld's flags: `-c` (by default) starts it without the jobs in its StateSaveLocation, which an earlier
    cluster left there (after `down`, a restart of the machine or container) and would otherwise come back
    without a word, a job that was running holding its nodes. Job ids go on from the last one all the same:
    none is given again, so a run directory's recorded job id never names another job."""
    return [] if keep_jobs else ["-c"]


def up_lines(result: Status) -> list[str]:
    """What `up` says of the jobs an earlier cluster saved, where it started slurmctld."""
    if result.cleared:
        return ["slurmctld started clean: jobs an earlier cluster saved were not brought back (--keep-jobs keeps "
                "them)"]
    if result.kept_jobs is None:
        return []
    if not result.kept_jobs:
        return ["--keep-jobs: the earlier cluster saved no jobs"]
    return [f"--keep-jobs: kept {len(result.kept_jobs)} job(s) of the earlier cluster (id state name nodes "
            "where/why):", *(f"  {line}" for line in result.kept_jobs)]


def _jobs() -> list[str]:
    proc = subprocess.run(["squeue", "-h", "-o", "%i %T %j %D %R"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip().splitlines()


def status() -> Status:
    nodes = ["no sinfo (slurm-wlm is not installed)"]
    if shutil.which("sinfo"):
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %c"], capture_output=True, text=True, timeout=30)
        nodes = proc.stdout.strip().splitlines() if proc.returncode == 0 else \
            [proc.stderr.strip() or "sinfo failed"]
    running = [name for name in _configured_nodes() if _slurmd_running(name)]
    return Status(_running("munged"), _running("slurmctld"), running, nodes)


def slurm_conf_text(host: str, cpus: int, memory_mb: int, nodes: list[str]) -> str:
    """Settings that work in a container (no cgroups, no accounting, root as SlurmUser), a slurmd per node.

    Each node has its own slurmd port and, through `%n`, its own spool directory, pid file and log.
    """
    node_lines = "\n".join(
        f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} CPUs={cpus} RealMemory={memory_mb} "
        "State=UNKNOWN" for port, name in enumerate(nodes, start=FIRST_SLURMD_PORT))
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
StateSaveLocation={STATE / 'state'}
SlurmdSpoolDir={STATE / 'spool' / '%n'}
SlurmctldPidFile={RUN / 'slurmctld.pid'}
SlurmdPidFile={RUN / 'slurmd-%n.pid'}
SlurmctldLogFile={LOGS / 'slurmctld.log'}
SlurmdLogFile={LOGS / 'slurmd-%n.log'}
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def hosts_text(current: str, nodes: list[str]) -> str:
    """/etc/hosts with this module's lines (one per node name, to 127.0.0.1) replaced by those for `nodes`."""
    kept = [line for line in current.splitlines() if not line.endswith(MARKER)]
    return "\n".join(kept + [f"127.0.0.1 {name} {MARKER}" for name in nodes]) + "\n"


def _write_conf(nodes: list[str]) -> bool:
    """Write slurm.conf for `nodes`; true when it changed."""
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024
    text = slurm_conf_text(socket.gethostname(), os.cpu_count() or 1, memory_mb, nodes)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    if CONF.exists() and CONF.read_text() == text:
        return False
    CONF.write_text(text)
    return True


def _configured_nodes() -> list[str]:
    if not CONF.exists() or MARKER not in CONF.read_text():
        return []
    return [line.split()[0].split("=", 1)[1] for line in CONF.read_text().splitlines() if line.startswith("NodeName=")]


def _map_node_names(nodes: list[str]) -> None:
    # Written in place, not renamed over: in a container /etc/hosts is often a bind mount.
    current = HOSTS.read_text() if HOSTS.exists() else ""
    wanted = hosts_text(current, nodes)
    if wanted != current:
        with open(HOSTS, "w") as f:
            f.write(wanted)


def _stop_slurm() -> None:
    subprocess.run(["pkill", "-x", "slurmd"], capture_output=True)
    subprocess.run(["pkill", "-x", "slurmctld"], capture_output=True)
    _wait_until(lambda: not (_running("slurmd") or _running("slurmctld")), 20)


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise MiniclusterError("the minicluster needs root: its daemons run as root, munge's key is owned by munge "
                               "and the node names go into /etc/hosts")
    missing = [b for b in BINARIES if not shutil.which(b) and not shutil.which(b, path="/usr/sbin:/sbin")]
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


def _start(cmd: list[str], name: str, started=None) -> None:
    started = started or (lambda: _running(name))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MiniclusterError(f"{name} failed to start: {proc.stderr.strip() or proc.stdout.strip()} "
                               f"(logs: {LOGS})")
    if not _wait_until(started, 15):
        raise MiniclusterError(f"{name} exited right after starting; see its log in {LOGS}")


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def _slurmd_running(node: str) -> bool:
    """The slurmd of `node` runs: its pid file names a live process."""
    try:
        pid = int((RUN / f"slurmd-{node}.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmd"


def _which(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise MiniclusterError(f"{name} not found")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.minicluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--nodes", type=int, help="with up: how many SLURM nodes (default: as many as now, else 1)")
    parser.add_argument("--keep-jobs", action="store_true",
                        help="with up: a slurmctld started now brings back the jobs an earlier cluster saved (by "
                             "default it starts without them); each is named")
    args = parser.parse_args(argv)
    try:
        result = up(args.nodes, keep_jobs=args.keep_jobs) if args.action == "up" else \
            {"down": down, "status": status}[args.action]()
    except MiniclusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"munged: {'running' if result.munged else 'stopped'}; "
          f"slurmctld: {'running' if result.slurmctld else 'stopped'}; "
          f"slurmd: {', '.join(result.slurmd) or 'none running'}")
    print("nodes (name state cpus):")
    for line in result.nodes:
        print(f"  {line}")
    for line in up_lines(result):
        print(line)
    return 0 if args.action != "status" or result.up else 1


if __name__ == "__main__":
    sys.exit(main())

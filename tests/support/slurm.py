"""Shared by the SLURM tests: the real minicluster (2 nodes), submitting through `launch`, waiting on jobs.

Under CI (`CI=true`, where `.ci/run` installs slurm-wlm) a cluster that is missing or cannot start fails the tests
instead of skipping them. Every SLURM test runs on the same 2-node cluster: one-node jobs take one node
of it, multi-node jobs both.

One thing is sped up: after a requeue SLURM holds a job for about 100 s before it may start again (its
begin time); `wait_finished` releases it at once with `scontrol update starttime=now`, which changes
when it runs, not what it does.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.support import DEMO_CONFIG, commands
from tests.support.ci import skip_or_fail_under_ci

NODES = 2


def require_minicluster():
    from launch import minicluster

    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        skip_or_fail_under_ci("needs root and Debian's slurm-wlm (apt-get install slurm-wlm munge)")
    return minicluster.up(nodes=NODES)


def launch(*args: str, env: dict | None = None) -> str:
    """`python -m launch ARGS`, which must succeed: what it printed on stdout."""
    proc = commands.launch(*args, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def submit(run_dir: Path, overrides: list[str], *flags: str, env: dict | None = None) -> str:
    """`launch submit` of the demo config with `overrides` (the job's environment: this one, with `env`);
    returns the SLURM job id."""
    launch("submit", DEMO_CONFIG, *overrides, *flags, env=env)
    return (run_dir / "slurm_job_id").read_text().strip()


def queue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.split()[0] if out.split() else ""


def job_state(job_id: str) -> str:
    """SLURM's state of a job, in the queue or recently ended (`scontrol show job`, kept for MinJobAge)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")


def wait_for(condition: Callable[[], bool], what: str, run_dir: Path, timeout: float = 300) -> None:
    """Poll until `condition` holds; fail with the run's job logs if it does not within `timeout`."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"no {what} within {timeout:.0f}s:\n" + job_logs(run_dir)
        time.sleep(0.05)


def wait_finished(run_dirs: Iterable[Path], timeout: float = 600) -> None:
    """Wait until every run has results; release requeued jobs from SLURM's begin-time hold."""
    from launch.submit.run_status import run_status

    deadline = time.time() + timeout
    pending = list(run_dirs)
    while pending:
        for run_dir in list(pending):
            status = run_status(run_dir)
            if status.state == "finished":
                pending.remove(run_dir)
            elif status.state == "failed":
                pytest.fail(f"{run_dir} failed:\n" + job_logs(run_dir))
            elif status.job_id and queue_state(status.job_id) == "PENDING":
                subprocess.run(["scontrol", "update", f"jobid={status.job_id}", "starttime=now"], capture_output=True)
        if time.time() > deadline:
            pytest.fail(f"not finished in {timeout}s: {pending}\n" + "".join(job_logs(d) for d in pending))
        time.sleep(1)


def job_logs(run_dir: Path, tail: int = 2500) -> str:
    """The run's SLURM job logs (each file's last `tail` characters; 0: whole)."""
    logs = sorted(Path(run_dir).glob("slurm/*_log.*")) + sorted(Path(run_dir).parent.glob("_sweeps/*/*_log.*"))
    return "".join(f"--- {p}\n{p.read_text()[-tail:]}\n" for p in logs)

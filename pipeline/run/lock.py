"""One owner per run directory: the primary rank holds `<run>/run.lock` from before it writes anything until exit.

A second training into the same directory - a command run twice, a resubmission while the job still runs,
two `reproduce` calls at once - is refused with one line naming the holder (host, pid, SLURM job, start,
command), before it writes anything. The holder refreshes the lock's heartbeat from a thread every 30 s.
The lock is taken over when its holder is gone: on the same host once its pid has ended; from another
host once its heartbeat is 10 minutes old; and at once by a later start of the same SLURM job (a requeued
job, whose earlier start SLURM has ended, wherever it ran). The lock itself is data_prep's `FileLock`.

A holder that was only paused longer than that (a suspended SLURM job, a node cut off from the file server) may
find its lock taken over when it runs again: it must not write another file into the directory, which is another
run's now. Its heartbeat notices (`FileLock.lost`), and every write of the training asks first (`holds`,
`ensure_held`: the checkpoints, metrics.jsonl and W&B, results.json); the training then ends with one line,
`RunLockLost`, exit code 4 (LOCKED), having written nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from data_prep.lock import FileLock, Locked, describe, holder_info, read_lock, stale_reason
from pipeline.dist import exit_codes
from pipeline.run.layout import RunDir


class RunLocked(Locked):
    """Another live run holds this run directory."""

    exit_code = exit_codes.LOCKED


def slurm_job(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """This process's SLURM job id and how many times SLURM has restarted (requeued) it, if it runs in one."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return {}
    return {"slurm_job_id": env["SLURM_JOB_ID"], "slurm_restarts": int(env.get("SLURM_RESTART_COUNT") or 0)}


class RunLockLost(RuntimeError):
    """This run's lock was taken over (or deleted) while the run was paused: the directory is not ours to write."""

    exit_code = exit_codes.LOCKED


class RunLock(FileLock):
    """`RunLock(run_dir).acquire()`: this run directory is ours until `release()`, or RunLocked naming its holder."""

    def __init__(self, run_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.job = slurm_job(env)
        super().__init__(RunDir(self.run_dir).lock, holder_info(**self.job), reclaim=self._earlier_start_of_this_job)

    def _earlier_start_of_this_job(self, holder: dict) -> str | None:
        """A lock left by an earlier start of this same SLURM job: SLURM ended that start before requeueing the job,
        wherever it ran, so it is ours to take back. (Two starts of one job never run at once; two job steps of
        one allocation can, and have the same restart count: those are told apart by pid and heartbeat.)"""
        if not self.job or holder.get("slurm_job_id") != self.job["slurm_job_id"]:
            return None
        if int(holder.get("slurm_restarts") or 0) >= int(self.job["slurm_restarts"]):  # type: ignore[arg-type]
            return None
        return f"left by an earlier start of this SLURM job {self.job['slurm_job_id']}, which SLURM requeued"

    def refusal(self, holder: dict) -> str:
        return (f"{self.run_dir} is already being trained by another run ({describe(holder)}); this start writes "
                f"nothing. Wait for it to end or stop it; if it is dead, its lock ({self.path}) is taken over once "
                "its process is gone from this host, or 10 minutes after its last heartbeat from another host "
                "(or delete the lock)")

    def acquire(self) -> None:
        try:
            super().acquire()
        except Locked as e:
            raise RunLocked(str(e), e.holder) from None

    def ensure_held(self) -> None:
        """Nothing while the lock is still ours; RunLockLost (one line: who has it, what to do) once it is not."""
        if not self.holds():
            raise RunLockLost(f"{self.run_dir} is no longer this run's: {self.lost}, while this process was not "
                              "heard from (suspended, or cut off from the file system, for longer than the lock's "
                              "10-minute staleness); this process stops and writes nothing more into it. Let the run "
                              "that holds it go on, or stop that one and run the same command to resume")


def lock_holder(run_dir: Path) -> dict | None:
    """The holder of a run directory's lock while it is alive (for `status`), else None."""

    path = RunDir(run_dir).lock
    holder = read_lock(path)
    if not holder or stale_reason(path, holder) is not None:
        return None
    return holder

"""Waiting for a submitted job as a user would want to: SLURM's reason while it waits (said when it changes, and
when waiting cannot change it), Ctrl-C cancelling what nobody would read, and submitit's sacct warnings said
once, in words.

`bench --slurm`, `evaluate --slurm --wait` and `prep --wait` wait through `wait_for_job`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

from launch.submit.partition import NEVER_STARTS
from launch.submit.queue import QueueUnanswered, queue_entry

POLL_S = 2.0  # squeue is cheap; a job that ends is noticed within this
SACCT_SAID = ("warning: SLURM's accounting (sacct) does not answer on this cluster: jobs are followed through "
              "squeue and their result files instead (submitit's own job states may lag)")


def wait_for_job(job: Any, what: str, poll_s: float = POLL_S) -> Any:
    """Wait until `job` (submitit's) has left SLURM's queue, then return its results (submitit raises the job's own
    failure). While it waits, SLURM's reason is printed when it changes. Ctrl-C cancels the job (`scancel`) and
    raises KeyboardInterrupt."""

    job_id = str(job.job_id)
    said: str | None = None
    try:
        while True:
            try:
                entry = queue_entry(job_id)
            except QueueUnanswered as e:  # a controller busy for a while: the job is still there, keep waiting
                print(f"{what}: {e}; still waiting", file=sys.stderr, flush=True)
                continue
            if entry is None:
                break
            state, reason = entry
            if state == "PENDING" and reason not in ("None", "", said):
                never = ("; it can never start as asked: Ctrl-C cancels it, then ask for less"
                         if reason in NEVER_STARTS else "")
                print(f"{what}: job {job_id} waits ({reason}){never}", file=sys.stderr, flush=True)
                said = reason
            time.sleep(poll_s)
    except KeyboardInterrupt:
        cancel(job_id, what)
        raise
    return job.results()


def cancel(job_id: str, what: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True)
    print(f"{what}: cancelled job {job_id} (`scancel {job_id}`)", file=sys.stderr, flush=True)


class _SacctSaidOnce(logging.Filter):
    """submitit repeats "Bypassing sacct error ..., status may be inaccurate" at every status check on a cluster
    without accounting: one line instead, once."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not _SacctSaidOnce.said:
            print(SACCT_SAID, file=sys.stderr, flush=True)
            _SacctSaidOnce.said = True
        return False


def explain_sacct_once() -> None:
    """Install the filter on submitit's logger (once per process)."""
    submitit_log = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctSaidOnce) for f in submitit_log.filters):
        submitit_log.addFilter(_SacctSaidOnce())

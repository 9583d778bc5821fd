"""What SLURM's queue says of jobs: their state and, while they wait, why (one `squeue` for any number of jobs).

A job that has left the queue has no entry. A queue that does not answer (a busy controller timing out) is
an error, never an empty queue: read as empty, every submitted run would look failed, and `reproduce` would
submit them all again. Light on purpose (no torch): `launch` imports it to say that error in one line.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence

# A controller that times out mostly answers a few seconds later: asked this many times, these seconds apart.
ATTEMPTS = 3
RETRY_S = 3.0


class QueueUnanswered(RuntimeError):
    """squeue failed (not for jobs that have left the queue): nothing may be decided from its silence."""


def queue_state(job_id: str) -> str | None:
    """SLURM's state of a job in its queue (PENDING, RUNNING, ...); None once the job has left it (or no SLURM)."""
    entry = queue_entry(job_id)
    return entry[0] if entry else None


def queue_entry(job_id: str) -> tuple[str, str] | None:
    """(SLURM's state, its reason: None, Priority, Resources, BeginTime, PartitionConfig, ...) of a job in the
    queue; None once the job has left it (or no SLURM)."""
    return queue_entries([job_id]).get(job_id)


def queue_entries(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """`queue_entry` of each job still in the queue, from one `squeue` (an array's tasks one a line, `123_4`, as
    their ids are recorded). Raises QueueUnanswered where squeue fails for another reason than that every job
    asked for has left the queue, after ATTEMPTS tries."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    argv = ["squeue", "-h", "--array", "-j", ",".join(dict.fromkeys(job_ids)), "-o", "%i|%T|%r"]
    for attempt in range(ATTEMPTS):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode == 0:
            return _parse(proc.stdout)
        if "Invalid job id" in proc.stderr:  # what squeue says when none of the jobs is in the queue any more
            return {}
        if attempt + 1 < ATTEMPTS:
            time.sleep(RETRY_S)
    said = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
    raise QueueUnanswered(f"SLURM's queue did not answer ({' '.join(argv[:5])} ...: {said}), {ATTEMPTS} times "
                          f"{RETRY_S:g} s apart; nothing was decided from it: run the same command again")


def _parse(out: str) -> dict[str, tuple[str, str]]:
    entries = {}
    for line in out.splitlines():  # a reason may hold spaces: "ReqNodeNotAvail, UnavailableNodes:n1"
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id:
            entries[job_id] = (state, reason)
    return entries

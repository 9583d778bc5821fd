"""What SLURM says of jobs that have left its queue: CANCELLED, TIMEOUT, PREEMPTED, FAILED, NODE_FAIL,
OUT_OF_MEMORY, COMPLETED, ...

Asked of the cluster's accounting (`sacct`, one call for any number of jobs) where it keeps one; else of the
controller (`scontrol show job`, which remembers an ended job for `MinJobAge`, 300 s by default); else read in
the job's log, where slurmstepd writes `*** JOB 123 ON n1 CANCELLED AT ... ***` (`DUE TO TIME LIMIT`,
`DUE TO PREEMPTION`, `DUE TO NODE FAILURE`) when it ends a running job. A job none of these knows is
absent from the answer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# slurmstepd's line in a job's stderr when SLURM ends it: what follows CANCELLED AT <time>.
_ENDED_LINE = re.compile(r"\*\*\* (?:JOB|STEP) [\w.]+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))? \*\*\*")
_DUE_TO = {None: "CANCELLED", "TIME LIMIT": "TIMEOUT", "PREEMPTION": "PREEMPTED", "NODE FAILURE": "NODE_FAIL"}


def ended_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM's final state of each job it still knows (`sacct`, else `scontrol`), e.g. {"123_4": "CANCELLED"}."""
    if not job_ids:
        return {}
    states = _from_accounting(job_ids)
    for job_id in job_ids:
        if job_id not in states and shutil.which("scontrol"):
            proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
            found = re.search(r"\bJobState=(\S+)", proc.stdout) if proc.returncode == 0 else None
            if found:
                states[job_id] = found.group(1)
    return states


def state_in_log(log: Path) -> str | None:
    """The state slurmstepd's last `*** ... CANCELLED AT ... ***` line in `log` says, if it has one."""
    said = _ENDED_LINE.findall(log.read_text(errors="replace"))
    return _DUE_TO.get(said[-1] or None, "CANCELLED") if said else None


def _from_accounting(job_ids: Sequence[str]) -> dict[str, str]:
    """`sacct`'s state of each job (none where the cluster keeps no accounting: sacct then fails)."""
    if not shutil.which("sacct"):
        return {}
    proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(dict.fromkeys(job_ids))],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    states = {}
    for line in proc.stdout.splitlines():  # "123_4|CANCELLED by 0": the state is the first word
        job_id, _, state = line.strip().partition("|")
        if job_id in job_ids and state.split():
            states[job_id] = state.split()[0]
    return states

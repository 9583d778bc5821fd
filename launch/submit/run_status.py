"""A run's state with SLURM's word on it: what its run directory's files say (`pipeline.run.state`), a submitted
run resolved by asking SLURM's queue once for any number of runs: queued (with SLURM's reason while it waits),
running, requeued (waiting again, with a checkpoint to resume from); and for a job that has left the queue
without finishing, what SLURM says of it (`launch.submit.ended_jobs`): cancelled, timeout, preempted, stopped
(it ended itself after a stop signal) or failed (its last error line and its log). A run that is not running
counts the steps it has saved: the step its next start resumes from.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.submit.ended_jobs import ended_states, state_in_log
from launch.submit.queue import queue_entries
from pipeline.run.layout import RunDir, RunsFolder
from pipeline.run.state import RunState, read_run_state

_SLURM_STATES = {"PENDING": "queued", "CONFIGURING": "queued", "RUNNING": "running", "COMPLETING": "running",
                 "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued",
                 "SUSPENDED": "running", "PREEMPTED": "requeued"}
IN_QUEUE = ("queued", "running", "requeued")  # a run in one of these states has its job in SLURM's queue
# SLURM's final state of a job that left the queue before its run finished: the run's state. Any other (FAILED,
# NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, ...) is a failure. COMPLETED: the job ended itself after a stop signal
# (`scancel --signal=TERM`), its checkpoint written.
_ENDED = {"CANCELLED": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout", "PREEMPTED": "preempted",
          "COMPLETED": "stopped"}
ENDED_UNFINISHED = ("stopped", "cancelled", "timeout", "preempted", "failed")  # each resumes when submitted again


@dataclass
class RunStatus(RunState):
    """A run's state with SLURM's word on it: not started | queued | running | requeued | finished, or one of
    ENDED_UNFINISHED (`submitted`, the files' own state of a SLURM run, is resolved by asking SLURM). A
    waiting job has SLURM's reason (Priority, Resources, BeginTime, ...); a failed one its log and last error
    line."""

    reason: str | None = None
    log: Path | None = None
    error: str | None = None


def run_status(run_dir: Path) -> RunStatus:
    """The run's state from its files (`read_run_state`), a submitted one resolved by SLURM's queue."""
    return run_statuses([run_dir])[0]


def run_statuses(run_dirs: Sequence[Path]) -> list[RunStatus]:
    """`run_status` of each run, SLURM's queue asked once for all of them: `status` of a table of 50 runs is one
    `squeue`, not 50 (a busy controller answers each in a fraction of a second, and its admins count them)."""
    statuses = [RunStatus(**vars(read_run_state(run_dir))) for run_dir in run_dirs]
    submitted = [s for s in statuses if s.state == "submitted" and s.job_id]
    queue = queue_entries([s.job_id for s in submitted])
    ended = ended_states([s.job_id for s in submitted if s.job_id not in queue])
    for status in submitted:
        if status.job_id in queue:
            _resolve_by_queue(status, queue[status.job_id])
        else:
            _resolve_ended(status, ended.get(status.job_id))
    return statuses


def _resolve_by_queue(status: RunStatus, queued: tuple[str, str]) -> None:
    """A submitted run's state as its job's entry in the queue says."""
    slurm_state, reason = queued
    status.state = _SLURM_STATES.get(slurm_state, slurm_state.lower())
    if status.state == "queued" and status.checkpoint_step is not None:
        status.state = "requeued"  # waiting again, with a checkpoint to resume from
    if status.state != "running":
        status.step = status.checkpoint_step or 0  # where it will resume
    if slurm_state == "PENDING" and reason not in ("None", ""):
        status.reason = reason


def _resolve_ended(status: RunStatus, slurm_state: str | None) -> None:
    """A submitted run whose job has left the queue without finishing it: its state as SLURM says (else as the
    job's log says), its step the last one saved."""
    status.log = job_log(Path(status.run_dir), status.job_id)
    status.step = status.checkpoint_step or 0
    slurm_state = slurm_state or (state_in_log(status.log) if status.log else None)
    ran = status.last_metrics or status.last_event or status.checkpoint_step is not None
    if slurm_state is None and status.log is None and not ran:  # cancelled while pending, SLURM has forgotten
        status.state, status.reason = "not started", f"job {status.job_id} left the queue without a log"
        return
    if slurm_state is None and str(status.last_event or "").startswith("stopped by"):
        slurm_state = "COMPLETED"  # its last word was a stop, its checkpoint written
    status.state = _ENDED.get(slurm_state, "failed")
    if status.state == "failed":
        status.error = last_error(status.log) if status.log else f"SLURM says {slurm_state}"


def job_log(run_dir: Path, job_id: str) -> Path | None:
    """The stderr log of the job's first task: submitit's, in the run's slurm/ folder (`launch submit`) or its
    table's _sweeps/<table>/ folder (`sweep`, `reproduce`)."""
    folders = [RunDir(run_dir).slurm_logs, *sorted(RunsFolder(run_dir.parent).all_sweeps.glob("*"))]
    found = [log for folder in folders for log in sorted(folder.glob(f"{job_id}_*log.err"))]
    return found[0] if found else None


def last_error(log: Path) -> str | None:
    """What a failed job said last: its last `error:` line (every error a user can fix is one), else the last
    line of its traceback (`SomeError: message`)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("error: ")]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*", line)]
    return (said or raised or [None])[-1]

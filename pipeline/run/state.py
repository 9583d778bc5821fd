"""Where a run stands, read from its run directory's files alone: no scheduler is asked.

    finished     results.json has training's "train" result
    submitted    not finished, and a SLURM job id is recorded (`slurm_job_id`): the files cannot tell a
                 queued job from a running or a failed one; `launch.reproduce.status` asks SLURM's queue
    running      its lock (`run.lock`) is held by a live process, or metrics.jsonl was written within the last
                 ACTIVE_WINDOW_S seconds (torchrun, one process)
    stopped      a checkpoint or metrics exist, but nothing was written lately
    not started  none of these

The report (`pipeline.report`) reads runs this way; `python -m launch status` adds what only SLURM
knows. Progress comes from the run's records: the start record's `total_steps`, the last training
record's step, `elapsed_s` and `eta_s` (written by `pipeline.train`), and the latest complete checkpoint. A run
that is not running counts the steps it has saved (its last checkpoint's: where it resumes), not those it logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.checkpoint.store import CheckpointStore
from pipeline.run.layout import RunDir
from pipeline.run.lock import lock_holder
from pipeline.run.logger import read_metrics
from pipeline.run.results import read_results

# A run outside SLURM (torchrun, one process) counts as running while it logged this recently.
ACTIVE_WINDOW_S = 600


@dataclass
class RunState:
    run_dir: Path
    state: str  # not started | submitted | running | stopped | finished
    step: int
    job_id: str | None
    last_metrics: dict = field(default_factory=dict)  # the last training record (loss, lr, images_per_s, ...)
    total_steps: int | None = None  # from the run's start record
    elapsed_s: float | None = None  # training wall time up to the last training record (across resumes)
    eta_s: float | None = None  # the last record's estimate, less the time since it was written
    checkpoint_step: int | None = None  # the latest complete checkpoint's step, if any
    idle_s: float | None = None  # seconds since metrics.jsonl was last written
    last_event: str | None = None  # the run's last event record ("stopped by SIGTERM", "final evaluation", ...)

    @property
    def progress(self) -> float | None:
        return self.step / self.total_steps if self.total_steps else None


def read_run_state(run_dir: Path) -> RunState:
    """The state of `run_dir` as its files tell it (a directory that does not exist: not started)."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    metrics = read_metrics(run_dir)
    train_records = [m for m in metrics if "loss" in m]
    last = train_records[-1] if train_records else {}
    complete = CheckpointStore(files.checkpoints).complete(warn=False)  # (a save in progress is no news here)
    latest = complete[-1] if complete else None
    step = max(int(last.get("step", 0)), latest.step if latest else 0)
    starts = [m["total_steps"] for m in metrics if m.get("event") == "start" and "total_steps" in m]
    job_file = files.slurm_job_id  # written by `launch` when it submits the run
    job_id = (job_file.read_text().strip() or None) if job_file.exists() else None
    idle_s = _seconds_since_written(files.metrics)
    finished = "train" in read_results(run_dir)
    if finished:
        state = "finished"
    elif job_id:
        state = "submitted"
    elif lock_holder(run_dir) is not None or (idle_s is not None and idle_s < ACTIVE_WINDOW_S):
        state = "running"
    else:
        state = "stopped" if latest is not None or metrics else "not started"
    if state in ("stopped", "not started"):
        step = latest.step if latest else 0  # where the next start resumes
    events = [m["event"] for m in metrics if "event" in m]
    eta = last.get("eta_s")
    # The estimate was made when the last line was written; it has been running down since (if the run is).
    eta_s = None if finished or eta is None else max(0.0, float(eta) - (idle_s or 0.0))
    elapsed = last.get("elapsed_s")
    return RunState(run_dir, state, step, job_id, last, starts[-1] if starts else None,
                    float(elapsed) if elapsed is not None else None, eta_s, latest.step if latest else None, idle_s,
                    events[-1] if events else None)


def _seconds_since_written(path: Path) -> float | None:
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None

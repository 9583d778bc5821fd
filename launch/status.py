"""`python -m launch status`: where each run stands, read from its run directory and SLURM's queue."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

from launch.slurm import JOB_ID_FILE
from pipeline.checkpoint import CheckpointStore
from pipeline.metrics import METRICS_FILE, read_metrics
from pipeline.results import read_results

_SLURM_STATES = {"PENDING": "queued", "CONFIGURING": "queued", "RUNNING": "running", "COMPLETING": "running",
                 "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued",
                 "SUSPENDED": "running", "PREEMPTED": "requeued"}
# A run outside SLURM (torchrun, one process) counts as running while it logged this recently.
ACTIVE_WINDOW_S = 600


@dataclass
class RunStatus:
    run_dir: Path
    state: str  # not started | queued | running | requeued | stopped | finished | failed
    step: int
    job_id: Optional[str]
    last_metrics: dict
    total_steps: Optional[int] = None  # from the run's start record

    @property
    def progress(self) -> Optional[float]:
        return self.step / self.total_steps if self.total_steps else None


def find_runs(paths: Iterable[str | Path]) -> List[Path]:
    """Run directories (holding a config.yaml) at or under the given paths."""
    found: List[Path] = []
    for path in map(Path, paths):
        if (path / "config.yaml").exists():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob("config.yaml") if "checkpoints" not in p.parts)
    return found


def run_status(run_dir: Path) -> RunStatus:
    metrics = read_metrics(run_dir)
    train_records = [m for m in metrics if "loss" in m]
    last = train_records[-1] if train_records else {}
    latest = CheckpointStore(run_dir / "checkpoints").latest()
    step = max(int(last.get("step", 0)), latest.step if latest else 0)
    starts = [m["total_steps"] for m in metrics if m.get("event") == "start" and "total_steps" in m]
    job_id = (run_dir / JOB_ID_FILE).read_text().strip() if (run_dir / JOB_ID_FILE).exists() else None
    if "train" in read_results(run_dir):
        state = "finished"
    elif job_id:
        queue_state = _squeue_state(job_id)
        if queue_state is None:
            state = "failed"  # left the queue without finishing
        else:
            state = _SLURM_STATES.get(queue_state, queue_state.lower())
            if state == "queued" and latest is not None:
                state = "requeued"  # waiting again, with a checkpoint to resume from
    elif _recently_active(run_dir / METRICS_FILE):
        state = "running"
    else:
        state = "stopped" if latest is not None or metrics else "not started"
    return RunStatus(run_dir, state, step, job_id, last, starts[-1] if starts else None)


def _recently_active(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < ACTIVE_WINDOW_S
    except FileNotFoundError:
        return False


def print_status(paths: List[str]) -> int:
    runs = find_runs(paths)
    if not runs:
        print(f"no runs found under {', '.join(paths)}")
        return 1
    print(f"{'run':<40} {'state':<11} {'step':>15} {'job':>10}  last metrics")
    for run in runs:
        s = run_status(run)
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in s.last_metrics.items()
                 if k in ("loss", "train_top1_error", "lr", "images_per_s")}
        step = f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step)
        print(f"{str(run):<40} {s.state:<11} {step:>15} {s.job_id or '-':>10}  {shown}")
    return 0


def _squeue_state(job_id: str) -> Optional[str]:
    if not shutil.which("squeue"):
        return None
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    states = proc.stdout.split()
    return states[0] if proc.returncode == 0 and states else None

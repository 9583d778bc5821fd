"""Metrics to the console, the run's `metrics.jsonl` and Weights & Biases, from the primary rank only.

Other ranks get a `NullLogger`, so the training loop calls `logger.log(...)` everywhere without asking
which rank it is. W&B is imported only when enabled. Its run id is kept in the run directory
(`wandb_id`), so a restarted or requeued job continues the same W&B run; steps already sent before the
restart are not sent again (W&B refuses steps that go backwards), while `metrics.jsonl` is cut back to
the checkpoint's step so the local record follows the trajectory that the resumed run really took.
An online run whose server cannot be reached within `logging.wandb_init_timeout_s` continues offline with
the same id (to be synced later), so a dead server delays training, and the ranks waiting for this one at
their next collective, by that long at most instead of ending the run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from pipeline.config_schema import LoggingConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id"
WANDB_STEP_FILE = "wandb_last_step"


class NullLogger:
    """What non-primary ranks log through: nothing."""

    run_id: Optional[str] = None

    def log(self, record: Dict[str, Any], step: int, console: bool = True) -> None:
        pass

    def summary(self, values: Dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger(NullLogger):
    def __init__(self, run_dir: Path, cfg: LoggingConfig, run_name: str, config: Dict[str, Any],
                 resume_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        _truncate_after(self.metrics_path, resume_step)
        self.run_id = _read(self.run_dir / WANDB_ID_FILE) or secrets.token_hex(4)
        (self.run_dir / WANDB_ID_FILE).write_text(self.run_id)
        self._wandb_last_step = int(_read(self.run_dir / WANDB_STEP_FILE) or -1)
        self._wandb = start_wandb(self.run_dir, cfg, run_name, config, self.run_id)

    def log(self, record: Dict[str, Any], step: int, console: bool = True) -> None:
        record = {"step": step, **record}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if console:
            print(_format(record), file=sys.stderr, flush=True)
        if self._wandb is not None and step > self._wandb_last_step:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)
            self._wandb_last_step = step
            (self.run_dir / WANDB_STEP_FILE).write_text(str(step))

    def summary(self, values: Dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def close(self) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.finish()
            self._wandb = None
            # `finish` can return before W&B's service process has written the last records of an offline
            # run; shutting the service down waits for it, so the files are whole once `close` returns.
            wandb.teardown()

    @property
    def wandb_dir(self) -> Optional[Path]:
        return self.run_dir / "wandb" if (self.run_dir / "wandb").exists() else None


def make_logger(is_primary: bool, run_dir: Path, cfg: LoggingConfig, run_name: str, config: Dict[str, Any],
                resume_step: int = 0) -> NullLogger:
    if not is_primary:
        return NullLogger()
    return RunLogger(run_dir, cfg, run_name, config, resume_step)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_wandb(run_dir: Path, cfg: LoggingConfig, run_name: str, config: Dict[str, Any], run_id: str,
                job_type: Optional[str] = None):
    """A W&B run (in `cfg.wandb_mode`) kept in `run_dir`, resumed if `run_id` exists; online falls back to offline."""
    if cfg.wandb_mode == "disabled":
        return None
    import wandb  # heavy: only when W&B is on
    from wandb.errors import CommError

    # Keep W&B's console capture and background services quiet on clusters without internet.
    os.environ.setdefault("WANDB_SILENT", "true")
    init = functools.partial(
        wandb.init,
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        group=cfg.wandb_group,
        name=cfg.wandb_name or run_name,
        tags=list(cfg.wandb_tags),
        job_type=job_type,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
        settings=wandb.Settings(console="off", init_timeout=cfg.wandb_init_timeout_s),
    )
    if cfg.wandb_mode != "online":
        return init(mode=cfg.wandb_mode)
    try:
        return init(mode="online")
    except (CommError, TimeoutError) as error:  # no answer from the server, or W&B's own wait ran out
        server = wandb.setup().settings.base_url
        reason = " ".join(line.strip() for line in f"{type(error).__name__}: {error}".splitlines())
    # The failed run stays registered with W&B's service process, which would refuse its id again
    # ("run ID ... is in use"): shut down the service this process started, and leave one inherited from a
    # parent process (WANDB_SERVICE) to that parent, so that the offline init starts a fresh service.
    wandb.teardown()
    os.environ.pop(wandb.env.SERVICE, None)
    run = init(mode="offline")
    log.warning("could not start an online W&B run at %s within %g s (%s); continuing offline with the same "
                "run id %s: the files are kept in %s and can be synced later with `wandb sync %s`",
                server, cfg.wandb_init_timeout_s, reason, run_id, run.sync_dir, run.sync_dir)
    return run


def _truncate_after(path: Path, step: int) -> None:
    """Drop records past `step`: they belong to work lost with the process that logged them."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def format_duration(seconds: Optional[float]) -> str:
    """42s, 3m07s, 1h02m, 2d03h: short enough for a log line or a status column; "-" for None."""
    if seconds is None:
        return "-"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# Seconds kept as numbers in metrics.jsonl and W&B, shown on the console as durations.
_DURATIONS = {"elapsed_s": "elapsed", "eta_s": "eta"}


def _format(record: Dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if key in _DURATIONS and isinstance(value, (int, float)):
            parts.append(f"{_DURATIONS[key]} {format_duration(value)}")
        else:
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)

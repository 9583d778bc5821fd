"""The run logger: metrics to the console, the run's `metrics.jsonl` and Weights & Biases, from the primary rank only.

Other ranks get a `NullLogger`, so the training loop calls `logger.log(...)` everywhere without asking
which rank it is. W&B is imported only when enabled. Its run id is kept in the run directory
(`wandb_id`), so a restarted or requeued job continues the same W&B run, and `metrics.jsonl` is cut back to
the checkpoint's step so the local record follows the trajectory that the resumed run really took. A last line
that an append cut short (a node crash, a full disk) is dropped then, with a warning saying so (`run.jsonl`).
What W&B holds for sure is known only once a start closes it cleanly (`wandb_last_step` is written then):
a start whose W&B service was killed with the job, or that was killed itself, may have lost whatever
W&B had not yet written. The next start therefore sends W&B again the records of `metrics.jsonl` after
that step, up to where it resumes, then goes on live (W&B drops a step it already has).
Files go to W&B as an artifact through `log_artifact` (the trained model: `pipeline.train.model_artifact`).
An online run whose server cannot be reached within `logging.wandb_init_timeout_s` continues offline with
the same id (to be synced later), so a dead server delays training, and the ranks waiting for this one at
their next collective, by that long at most instead of ending the run.

W&B never ends a run. Its service process belongs to the job like the training processes, so SLURM's
SIGTERM (scancel, a requeue, a preemption, a node going down) ends it too, while training saves its
checkpoint; its next call then fails. The first failure is one warning (on the console and as an event
in metrics.jsonl) and W&B is off for the rest of this start: `metrics.jsonl` keeps every record, and the
next start continues the same W&B run. A `metrics.jsonl` that cannot be written (a full disk) is likewise
one warning: the checkpoint save that follows fails on every rank and ends the run with one error.

A run whose directory was taken from it (its lock taken over while the job was paused: `pipeline.run.lock`) writes
nothing more: each record first asks `owns()` (the lock file read), and one that finds the directory another run's
is dropped, as is everything after it; the training ends at its next check, with one line. W&B's own folder of this
start is still closed (it holds only what was sent before), but `wandb_last_step`, shared with the new holder, is not
written.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.schema import LoggingConfig
from pipeline.run.jsonl import read_jsonl
from pipeline.run.layout import RunDir
from pipeline.run.wandb_run import forget_wandb_service, start_wandb


@dataclass(frozen=True)
class Artifact:
    """Files to log as one W&B artifact: `files` maps each file's name in the artifact to its path; those in
    `mutable` may change after logging (W&B copies them first), the others may not. A W&B URL names the artifact
    by its first alias."""

    name: str
    type: str
    files: dict[str, Path]
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    mutable: frozenset[str] = frozenset()


class NullLogger:
    """What non-primary ranks log through: nothing."""

    run_id: str | None = None

    def log(self, record: dict[str, Any], step: int, console: bool = True) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_artifact(self, artifact: Artifact) -> str | None:
        """Nothing logged: None."""
        return None

    def close(self) -> None:
        pass


class RunLogger(NullLogger):
    def __init__(self, run_dir: Path, cfg: LoggingConfig, run_name: str, config: dict[str, Any],
                 resume_step: int = 0, owns: Callable[[], bool] | None = None) -> None:
        self.owns = owns or (lambda: True)  # whether the run directory is still this training's (its lock)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.files = RunDir(self.run_dir)
        self.metrics_path = self.files.metrics
        torn = _truncate_after(self.metrics_path, resume_step)
        self.run_id = _read(self.files.wandb_id) or secrets.token_hex(4)
        self.files.wandb_id.write_text(self.run_id)
        self._wandb_last_step = int(_read(self.files.wandb_last_step) or -1)  # the last one known written
        self._sent = False  # whether this start has sent W&B anything (its row at _wandb_last_step is open)
        self._metrics_failed = False
        self._wandb = start_wandb(self.run_dir, cfg, run_name, config, self.run_id)
        self._resend_to_wandb(resume_step)
        if torn:
            self._warn(resume_step, f"{self.metrics_path}: dropped its last line, {len(torn)} bytes that were not a "
                                    "whole record (an append cut short by a crash or a full disk)")

    def _resend_to_wandb(self, resume_step: int) -> None:
        """Send W&B the records it may have lost with an earlier start (after the last clean close, up to here)."""
        if self._wandb is None:
            return
        for record in read_metrics(self.run_dir):
            step = int(record.get("step", 0))
            if self._wandb_last_step < step <= resume_step:
                self._send(record, step)

    def log(self, record: dict[str, Any], step: int, console: bool = True) -> None:
        if not self.owns():
            return  # another run's directory now: training ends at its next check, with the error
        record = {"step": step, **record}
        self._append(record)
        if console:
            print(_format(record), file=sys.stderr, flush=True)
        self._send(record, step)

    def _send(self, record: dict[str, Any], step: int) -> None:
        # W&B refuses steps that go backwards; several records of one step of this start go to the same row.
        if self._wandb is None or step < self._wandb_last_step or (step == self._wandb_last_step and not self._sent):
            return
        values = {k: v for k, v in record.items() if k != "step"}
        if self._call_wandb(step, lambda: self._wandb.log(values, step=step)):
            self._wandb_last_step, self._sent = step, True

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None and self.owns():
            self._call_wandb(None, lambda: self._wandb.summary.update(values))

    def log_artifact(self, artifact: Artifact) -> str | None:
        """Log `artifact` to this start's W&B run (sent, or uploaded, when W&B closes); returns its URL where the
        run is online, else None. Raises where W&B is off for this start or refuses the artifact."""
        if self._wandb is None:
            raise RuntimeError("W&B is off for this start (it stopped working earlier: see the warning above)")
        import wandb  # W&B: only when it is on

        logged = wandb.Artifact(artifact.name, type=artifact.type, metadata=artifact.metadata)
        for name, path in artifact.files.items():
            # Immutable: W&B reads the file where it lies (when it uploads, also from `wandb sync` later) instead of
            # first copying it into its staging folder in the user's home, which a cluster's quota would not hold.
            logged.add_file(str(Path(path).resolve()), name=name,
                            policy="mutable" if name in artifact.mutable else "immutable")
        self._wandb.log_artifact(logged, aliases=list(artifact.aliases))
        url = self._wandb.url  # None offline
        if not url or "/runs/" not in url:
            return None
        alias = artifact.aliases[0] if artifact.aliases else "latest"
        return f"{url.rsplit('/runs/', 1)[0]}/artifacts/{artifact.type}/{artifact.name}/{alias}"

    def close(self) -> None:
        if self._wandb is None:
            return
        import wandb  # W&B: only when it is on

        run, self._wandb = self._wandb, None
        try:
            run.finish()
            # `finish` can return before W&B's service process has written the last records of an offline
            # run; shutting the service down waits for it, so the files are whole once `close` returns.
            wandb.teardown()
        except BaseException as error:  # noqa: BLE001 - W&B's service ended with the job's signal (or exit())
            self._wandb_failed(None, error)
            forget_wandb_service(run)
            return
        if not self.owns():
            return  # the new holder keeps its own count
        try:  # every step sent is written now: the next start sends only what comes after it
            self.files.wandb_last_step.write_text(str(self._wandb_last_step))
        except OSError:
            pass  # a full disk: the next start sends some records again, which W&B drops

    def _append(self, record: dict[str, Any]) -> None:
        try:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as e:
            if not self._metrics_failed:
                self._metrics_failed = True
                print(f"warning: cannot write {self.metrics_path}: {e.strerror or e}; records are printed only "
                      "until it can be written again", file=sys.stderr, flush=True)
        else:
            self._metrics_failed = False

    def _call_wandb(self, step: int | None, call) -> bool:
        """`call()`; False (and W&B off for this start, said once) when W&B has failed."""
        try:
            call()
            return True
        except Exception as error:  # noqa: BLE001 - W&B's failure must not end training
            self._wandb, run = None, self._wandb
            self._wandb_failed(step, error)
            forget_wandb_service(run)
            return False

    def _wandb_failed(self, step: int | None, error: BaseException) -> None:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        where = f"at step {step}" if step is not None else "while closing"
        why = " (its service process has ended: SLURM signals every process of a job it stops)" \
            if isinstance(error, (ConnectionError, EOFError)) else ""
        goes_on = "Training goes on without it; " if step is not None else ""
        message = (f"W&B stopped working {where}: {reason}{why}. {goes_on}{self.metrics_path} keeps every record, "
                   "and the next start of this run continues the same W&B run")
        self._warn(step if step is not None else self._wandb_last_step, message)

    def _warn(self, step: int, message: str) -> None:
        """One `warning:` line on the console and as an event in metrics.jsonl (not in W&B: it is not a metric)."""
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if self.owns():
            self._append({"step": step, "event": f"warning: {message}"})


def make_logger(is_primary: bool, run_dir: Path, cfg: LoggingConfig, run_name: str, config: dict[str, Any],
                resume_step: int = 0, owns: Callable[[], bool] | None = None) -> NullLogger:
    """The primary's `RunLogger` (`owns`: whether the run directory is still this training's), else a no-op."""
    if not is_primary:
        return NullLogger()
    return RunLogger(run_dir, cfg, run_name, config, resume_step, owns)


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of the run's metrics.jsonl; a torn last line (an append cut short, or one being written) is
    left out, a bad line before it raises `JsonlDamaged` naming the file and line."""
    return read_jsonl(RunDir(run_dir).metrics).records


def _truncate_after(path: Path, step: int) -> bytes:
    """Drop records past `step`: they belong to work lost with the process that logged them. A torn last line is
    dropped too (and returned, to be reported): the next append would otherwise join it into one broken line."""
    read = read_jsonl(path)
    kept = [record for record in read.records if record.get("step", 0) <= step]
    if len(kept) != len(read.records) or read.needs_rewrite:
        # The same text `_append` writes, through a whole file renamed into place: a crash here loses nothing.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))
        tmp.replace(path)
    return read.torn


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def format_duration(seconds: float | None) -> str:
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


def _format(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if key in _DURATIONS and isinstance(value, (int, float)):
            parts.append(f"{_DURATIONS[key]} {format_duration(value)}")
        else:
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)

"""When the training loop saves: every `checkpoint.every_steps` steps, every `checkpoint.every_minutes`, at an
epoch's end, and at once on a stop signal.

Step-based saves fall on the same step on every rank. The clock and a stop signal are one rank's own, and a
consistent checkpoint needs every rank, so those are agreed on by a collective - asked only at checks, never in
between: no host sync per step. Checks come every `checkpoint.check_every_steps` steps where steps are fast, and
every `checkpoint.check_every_seconds` (but not more often than every step) where they are slow: SLURM sends
SIGKILL `KillWait` seconds (30 by default) after its SIGTERM, and ten steps of a ResNet-152 at a large batch, or
of a busy CPU, can take longer than that. The same collective carries the slowest rank's seconds per step since
the last check, so every rank sets the same next check. It also asks whether every rank has written its files
of a background save, which is then marked complete, and whether a rank has seen the run directory taken from this
training (its lock taken over while the job was paused): then every rank ends at once (exit code 4), writing nothing.

    policy = SavePolicy(cfg.checkpoint, stop_requested, checkpoints)
    decision = policy.after_step(step)        # every rank, after every step
    if decision.save:
        save(background=not decision.stopping)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import dist
from pipeline.checkpoint.run_checkpoints import RunCheckpoints
from pipeline.config.schema import CheckpointConfig


@dataclass(frozen=True)
class SaveDecision:
    save: bool  # save a checkpoint of this step
    stopping: bool  # a stop signal reached some rank: save now, at once, then stop


class SavePolicy:
    """The loop asks it after every step (collectively) and at every epoch's end; it is told of every save."""

    def __init__(self, cfg: CheckpointConfig, stop_requested: Callable[[], bool], checkpoints: RunCheckpoints) -> None:
        self.cfg, self.stop_requested, self.checkpoints = cfg, stop_requested, checkpoints
        self.last_save = time.monotonic()
        # The first check comes after the first step of a start (its time, compilation and a loader's warm-up
        # included, is all that is known then); each check sets the next.
        self.next_check: int | None = None
        self.last_check = (None, time.monotonic())  # (step, when) of the last check, or of the policy's start
        self.checks = 0

    def after_step(self, step: int) -> SaveDecision:
        cfg = self.cfg
        steps_due = bool(cfg.every_steps) and step % cfg.every_steps == 0
        stopping = minutes_due = False
        if self.next_check is None or step >= self.next_check:
            now = time.monotonic()
            checked_step, checked_at = self.last_check
            step_s = (now - checked_at) / (step - checked_step if checked_step is not None else 1)
            stop, minutes, writing, slowest_step_s, lost = dist.max_over_ranks(
                [self.stop_requested(), self._minutes_due(), self.checkpoints.writing, step_s,
                 self.checkpoints.owner_lost()])
            if lost:
                self.checkpoints.ensure_owned()  # raises on every rank: the owner's error on the one that saw it
            stopping, minutes_due = bool(stop), bool(minutes)
            if not writing:
                self.checkpoints.finish_pending()
            self.next_check = step + self.steps_between_checks(slowest_step_s)
            self.last_check, self.checks = (step, now), self.checks + 1
        return SaveDecision(save=stopping or steps_due or minutes_due, stopping=stopping)

    def steps_between_checks(self, step_s: float) -> int:
        """Steps to the next check, where the slowest rank took `step_s` seconds a step since the last one (the
        saves and evaluations on the way included: what counts is the time a signal may wait)."""
        fit = int(self.cfg.check_every_seconds / step_s) if step_s > 0 else self.cfg.check_every_steps
        return max(1, min(self.cfg.check_every_steps, fit))

    def at_epoch_end(self, step: int, total_steps: int) -> bool:
        """Whether to save at the end of an epoch that ended at `step` (the last one is saved after its evaluation)."""
        return self.cfg.at_epoch_end and step < total_steps

    def saved(self) -> None:
        """A checkpoint was just saved: the minutes count from now."""
        self.last_save = time.monotonic()

    def _minutes_due(self) -> bool:
        every = self.cfg.every_minutes
        return bool(every) and time.monotonic() - self.last_save > 60 * every

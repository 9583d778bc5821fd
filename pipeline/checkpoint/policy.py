"""When the training loop saves: every `checkpoint.every_steps` steps, every `checkpoint.every_minutes`, at an
epoch's end, and at once on a stop signal.

Step-based saves fall on the same step on every rank. The clock and a stop signal are one rank's own, and a
consistent checkpoint needs every rank, so those are agreed on by a collective - asked only every
`checkpoint.check_every_steps` steps, never in between: no host sync per step. The same collective asks whether
every rank has written its files of a background save, which is then marked complete.

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

    def after_step(self, step: int) -> SaveDecision:
        cfg = self.cfg
        steps_due = bool(cfg.every_steps) and step % cfg.every_steps == 0
        stopping = minutes_due = False
        if step % cfg.check_every_steps == 0:
            stopping, minutes_due, writing = dist.any_rank(
                [self.stop_requested(), self._minutes_due(), self.checkpoints.writing])
            if not writing:
                self.checkpoints.finish_pending()
        return SaveDecision(save=stopping or steps_due or minutes_due, stopping=stopping)

    def at_epoch_end(self, step: int, total_steps: int) -> bool:
        """Whether to save at the end of an epoch that ended at `step` (the last one is saved after its evaluation)."""
        return self.cfg.at_epoch_end and step < total_steps

    def saved(self) -> None:
        """A checkpoint was just saved: the minutes count from now."""
        self.last_save = time.monotonic()

    def _minutes_due(self) -> bool:
        every = self.cfg.every_minutes
        return bool(every) and time.monotonic() - self.last_save > 60 * every

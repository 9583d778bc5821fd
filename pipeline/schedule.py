"""Learning rate as a pure function of the step, as in the paper's recipes.

    schedule = LRSchedule(cfg.schedule, base_lr=cfg.optim.lr, steps_per_epoch=390, global_batch=128)
    schedule.lr(step)          # the same answer every time: easy to plot, test and resume
    schedule.total_steps       # where training stops

- multistep: divide by 1/gamma at each milestone (CIFAR: at 32k and 48k iterations, stop at 64k;
  ImageNet: at epochs 30, 60, 90), milestones given in iterations or epochs;
- plateau: divide when the validation error stops improving (the paper's ImageNet rule); the one
  stateful schedule, its state (`PlateauState`) goes into checkpoints;
- warm-up: "constant" holds a small lr first (ResNet-110's 0.01 for ~400 iterations), "linear" ramps
  from that small lr up to the scheduled one;
- the linear scaling rule multiplies lr by global_batch / base_batch_size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional

from pipeline.config_schema import ScheduleConfig


@dataclass
class PlateauState:
    """Divide-on-plateau bookkeeping: plain numbers, saved in checkpoints."""

    divisions: int = 0
    best_error: Optional[float] = None
    evals_since_best: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.divisions = int(state["divisions"])
        self.best_error = state["best_error"]
        self.evals_since_best = int(state["evals_since_best"])


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int, global_batch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.peak_lr = base_lr * (global_batch / cfg.base_batch_size if cfg.scale_lr else 1.0)
        self.plateau = PlateauState()

    @property
    def total_steps(self) -> int:
        return self._to_steps(self.cfg.total)

    @property
    def milestone_steps(self) -> List[int]:
        return [self._to_steps(m) for m in self.cfg.milestones]

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        cfg = self.cfg
        if cfg.warmup != "none" and step < cfg.warmup_iterations:
            if cfg.warmup == "constant":
                return cfg.warmup_lr
            progress = step / cfg.warmup_iterations
            return cfg.warmup_lr + (self._scheduled(step) - cfg.warmup_lr) * progress
        return self._scheduled(step)

    def _scheduled(self, step: int) -> float:
        if self.cfg.kind == "multistep":
            passed = sum(step >= m for m in self.milestone_steps)
            return self.peak_lr * self.cfg.gamma**passed
        if self.cfg.kind == "plateau":
            return max(self.peak_lr * self.cfg.gamma**self.plateau.divisions, self.cfg.plateau_min_lr)
        return self.peak_lr

    def observe_validation_error(self, error: float) -> bool:
        """Feed a validation error to the plateau rule; True when it just divided the lr."""
        if self.cfg.kind != "plateau":
            return False
        state = self.plateau
        improved = state.best_error is None or error < state.best_error * (1 - self.cfg.plateau_threshold)
        if improved:
            state.best_error, state.evals_since_best = error, 0
            return False
        state.evals_since_best += 1
        if state.evals_since_best < self.cfg.plateau_patience:
            return False
        state.divisions += 1
        state.evals_since_best = 0
        return True

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state["plateau"])

    def _to_steps(self, amount: int) -> int:
        return amount * self.steps_per_epoch if self.cfg.unit == "epoch" else amount

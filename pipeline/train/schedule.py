"""Learning rate as a pure function of the step, as in the paper's recipes.

    schedule = LRSchedule(cfg.schedule, base_lr=cfg.optim.lr, steps_per_epoch=390, global_batch=128)
    schedule.lr(step)          # the same answer every time: easy to plot, test and resume
    schedule.total_steps       # where training stops

- multistep: divide by 1/gamma at each milestone (CIFAR: at 32k and 48k iterations, stop at 64k;
  ImageNet: at epochs 30, 60, 90), milestones given in iterations or epochs;
- plateau: divide when the validation error stops improving (the paper's ImageNet rule); its state
  (`PlateauState`) goes into checkpoints;
- warm-up: "constant" holds a small lr for a fixed number of iterations, "linear" ramps from that small
  lr up to the scheduled one, and "until_train_error" is ResNet-110's rule: 0.01 "until the training
  error is below 80% (about 400 iterations)", then the schedule. The train loop feeds it each logged
  training error (`observe_train_error`), which is all-reduced and so the same on every rank; the step
  where warm-up ended is recorded (and checkpointed), and lr stays a pure function of (step, that step);
- the linear scaling rule multiplies lr by global_batch / base_batch_size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.config.schema import ScheduleConfig


@dataclass
class PlateauState:
    """Divide-on-plateau bookkeeping: plain numbers, saved in checkpoints."""

    divisions: int = 0
    best_error: float | None = None
    evals_since_best: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.divisions = int(state["divisions"])
        self.best_error = state["best_error"]
        self.evals_since_best = int(state["evals_since_best"])


class LRSchedule:
    """lr(step) for one run; `state_dict` holds what observations decided (plateau divisions, warm-up end)."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int, global_batch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.peak_lr = base_lr * (global_batch / cfg.base_batch_size if cfg.scale_lr else 1.0)
        self.plateau = PlateauState()
        # until_train_error: the step from which the scheduled lr applies, once a logged error decided it.
        self.warmup_end_step: int | None = None

    @property
    def total_steps(self) -> int:
        return self._to_steps(self.cfg.total)

    @property
    def milestone_steps(self) -> list[int]:
        return [self._to_steps(m) for m in self.cfg.milestones]

    @property
    def warmup_steps(self) -> int:
        """How many steps warm up: fixed, or for until_train_error the recorded end (the cap until then)."""
        cap = self.cfg.warmup_iterations
        if self.cfg.warmup == "until_train_error" and self.warmup_end_step is not None:
            return min(self.warmup_end_step, cap)
        return cap

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        cfg = self.cfg
        if cfg.warmup != "none" and step < self.warmup_steps:
            if cfg.warmup in ("constant", "until_train_error"):
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

    def observe_train_error(self, step: int, error: float) -> bool:
        """Feed the training error (%) logged after `step` steps; True when it just ended the warm-up.

        until_train_error ends at the first error strictly below `warmup_until_error`, or at the cap
        (`warmup_iterations`) whatever the error: steps from `step` on get the scheduled lr. Every rank
        must see the same error (the logged one is all-reduced), so every rank decides the same step."""
        cfg = self.cfg
        if cfg.warmup != "until_train_error" or self.warmup_end_step is not None:
            return False
        if error < cfg.warmup_until_error or step >= cfg.warmup_iterations:
            self.warmup_end_step = min(step, cfg.warmup_iterations)
            return True
        return False

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict(), "warmup_end_step": self.warmup_end_step}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state["plateau"])
        # Checkpoints from before until_train_error have no entry: warm-up not ended by an observation.
        self.warmup_end_step = state.get("warmup_end_step")

    def _to_steps(self, amount: int) -> int:
        return amount * self.steps_per_epoch if self.cfg.unit == "epoch" else amount

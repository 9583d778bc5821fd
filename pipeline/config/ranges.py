"""The allowed range of every number in a config, in one table, checked when a section is built.

A value outside its range is refused before anything runs: a zero that later divides (`logging.every_steps`),
a negative that silently means something else (`checkpoint.every_steps=-1` saving every step) or a length that
trains nothing (`schedule.total=-5`) each become one message that names the key and its range. The launcher's
numeric flags use the same ranges (`Range.parse_int`), so `--nodes 0` and `slurm.nodes=0` are refused alike.

    check_section("optim", cfg.optim)      # ValueError: optim.momentum must be in [0, 1), not 1.5
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

MAX_SEED = 2**31 - 1  # the largest seed every consumer takes (numpy, torch, DALI's int32)


@dataclass(frozen=True)
class Range:
    """low <= value <= high (either end open where said); `note` says what an end value means, e.g. 0 is off."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # nan passes no comparison, inf is no setting
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def text(self) -> str:
        """The range in words, as messages give it: 'at least 1', 'positive', 'in [0, 1)'."""
        if self.high is None:
            words = "positive" if (self.low, self.low_open) == (0, True) else f"at least {_number(self.low)}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            words = f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        return f"{words} ({self.note})" if self.note else words

    def parse_float(self, text: str) -> float:
        """An argparse `type=` for a decimal flag in this range."""
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {self.text()}, not {text!r}") from None
        if not self.holds(value):
            raise argparse.ArgumentTypeError(f"must be {self.text()}, not {text}")
        return value

    def parse_int(self, text: str) -> int:
        """An argparse `type=` for an integer flag in this range; argparse names the flag before the message."""
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {self.text()}, not {text!r}") from None
        if not self.holds(value):
            raise argparse.ArgumentTypeError(f"must be an integer {self.text()}, not {value}")
        return value


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
OFF_OR_MORE = Range(0, note="0: off")
FRACTION = Range(0, 1)

# section -> key -> range. A key of an Optional field is checked when it is set; a list's items each.
RANGES: dict[str, dict[str, Range]] = {
    "run": {"seed": Range(0, MAX_SEED)},
    "model": {"num_classes": AT_LEAST_1, "bn_group_size": OFF_OR_MORE},
    "data": {"batch_size": AT_LEAST_1, "recipe_batch_per_gpu": AT_LEAST_1, "eval_batch_per_gpu": AT_LEAST_1,
             "image_size": AT_LEAST_1, "resize_min": AT_LEAST_1, "resize_max": AT_LEAST_1,
             "rrc_min_scale": Range(0, 1, low_open=True), "pad": NON_NEGATIVE, "pca_lighting": OFF_OR_MORE,
             "shuffle_buffer": AT_LEAST_1, "hw_decoder_load": FRACTION,
             "num_threads": Range(0, note="0: the torch loader reads in the rank's own process")},
    "optim": {"lr": POSITIVE, "momentum": Range(0, 1, high_open=True), "weight_decay": NON_NEGATIVE},
    # A decay factor: below 1 lowers the rate, 1 keeps it; above 1 or 0 is no schedule the paper has.
    "schedule": {"milestones": NON_NEGATIVE, "gamma": Range(0, 1, low_open=True), "total": AT_LEAST_1,
                 "warmup_iterations": NON_NEGATIVE, "warmup_lr": NON_NEGATIVE, "warmup_until_error": Range(0, 100),
                 "base_batch_size": AT_LEAST_1, "plateau_patience": NON_NEGATIVE, "plateau_threshold": NON_NEGATIVE,
                 "plateau_min_lr": NON_NEGATIVE},
    "engine": {"timeout_minutes": POSITIVE, "hang_timeout_minutes": POSITIVE},
    "checkpoint": {"every_steps": OFF_OR_MORE, "every_minutes": OFF_OR_MORE, "keep_last": AT_LEAST_1,
                   "check_every_steps": AT_LEAST_1, "check_every_seconds": POSITIVE},
    "logging": {"every_steps": AT_LEAST_1, "wandb_init_timeout_s": POSITIVE},
    "eval": {"every_epochs": Range(0, note="0: only at the end"), "every_steps": OFF_OR_MORE,
             "resize": AT_LEAST_1, "scales": AT_LEAST_1},
    "slurm": {"nodes": AT_LEAST_1, "gpus_per_node": Range(0, note="0: CPU-only"), "tasks_per_node": AT_LEAST_1,
              "cpus_per_task": AT_LEAST_1, "mem_gb": AT_LEAST_1, "time_minutes": AT_LEAST_1,
              "max_requeues": NON_NEGATIVE, "signal_delay_s": NON_NEGATIVE},
}


def check_section(section: str, values: Any) -> None:
    """Raise ValueError naming the first key of `values` (a section's dataclass) outside its range."""
    for key, allowed in RANGES[section].items():
        value = getattr(values, key)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item is not None and not allowed.holds(item):
                each = " each" if isinstance(value, (list, tuple)) else ""
                raise ValueError(f"{section}.{key} must{each} be {allowed.text()}, not {_shown(value)}")


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value:g}"


def _shown(value: Any) -> str:
    """A value as it would be typed: 0 for 0.0, [224, 0] for a list."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return _number(value) if isinstance(value, (int, float)) else str(value)

"""Where training stands, and the sums behind each periodic training record.

`Progress` is what a checkpoint restores besides the weights; `Clock` the run's training wall time over all its
starts; `Window` the loss, hits, images and data wait since the previous record, kept on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipeline import dist
from pipeline.dist import DistInfo
from pipeline.dist.process import peak_memory_mb


@dataclass
class Progress:
    """Where training stands: what a checkpoint must restore besides the weights."""

    step: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0  # training wall time so far, over every start of the run (older checkpoints: 0)


class Clock:
    """The run's training wall time: what earlier starts of the run spent (from the checkpoint) plus this one's."""

    def __init__(self, before: float) -> None:
        self.before, self.start = before, time.monotonic()

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start


class Window:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.data_time = 0.0
        self.loss_sum = torch.zeros(())
        self.hits = torch.zeros((), dtype=torch.long)
        self.samples = 0
        self.steps = 0

    def add(self, loss: torch.Tensor, hits: torch.Tensor, samples: int) -> None:
        # Accumulate on the device: no host sync per step.
        self.loss_sum = self.loss_sum.to(loss.device) + loss
        self.hits = self.hits.to(hits.device) + hits
        self.samples += samples
        self.steps += 1

    def eta_s(self, remaining_steps: int) -> float:
        """Seconds left at this window's pace (its steps include any evaluation or checkpoint within it)."""
        return remaining_steps * (time.perf_counter() - self.start) / max(self.steps, 1)

    def report(self, info: DistInfo, device: torch.device) -> dict:
        elapsed = time.perf_counter() - self.start
        loss_sum, hits, samples, data_time = dist.all_reduce_sum(
            [float(self.loss_sum), float(self.hits), float(self.samples), self.data_time])
        steps = max(self.steps, 1)
        return {
            "loss": loss_sum / (steps * info.world_size),
            "train_top1_error": 100.0 * (1 - hits / max(samples, 1)),
            "images_per_s": samples / max(elapsed, 1e-9),
            "data_wait_fraction": data_time / info.world_size / max(elapsed, 1e-9),
            "memory_mb": peak_memory_mb(device),
        }

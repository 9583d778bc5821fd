"""What every loader shares: epoch arithmetic, the (epoch, step) position, its state dict, the finish step.

A loader is iterated once per epoch: `for images, labels in loader` yields `steps_per_epoch` batches
(training) or every sample of this rank's part of the split once (evaluation), then the epoch ends and
the next `iter()` starts the next one. Backends implement `_batches(epoch, start_step)`, which yields
uint8 NHWC image batches and int64 labels on the CPU (or the GPU for DALI's mixed decoding).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from pipeline.config import ConfigError
from pipeline.data.augment import Finish
from pipeline.dist import DistInfo

log = logging.getLogger("pipeline.data")

STATE_VERSION = 1


def train_steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Every rank runs floor(N / global batch) steps; the remainder of the epoch is dropped."""
    return num_samples // global_batch


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous part [start, end) of N samples - the same split as DALI's reader uses."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def local_batch(global_batch: int, world_size: int, what: str) -> int:
    if global_batch % world_size:
        raise ConfigError(f"data.{what} ({global_batch}) is not divisible by the world size ({world_size}): "
                          f"choose a multiple of {world_size}, or another number of processes")
    return global_batch // world_size


class Loader:
    """Iterable of (images, labels) batches with an exactly resumable position."""

    backend = "base"

    def __init__(self, *, train: bool, info: DistInfo, seed: int, batch_size: int, num_samples: int,
                 steps_per_epoch: int, finish: Finish, device: torch.device) -> None:
        self.train = train
        self.info = info
        self.seed = seed
        self.batch_size = batch_size  # per rank
        self.num_samples = num_samples  # of the whole split
        self.steps_per_epoch = steps_per_epoch  # this rank's batches per epoch
        self.finish = finish
        self.device = device
        self.epoch = 0
        self.step = 0  # batches of the current epoch already yielded

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            self.step = 0  # evaluation always covers the whole split
        for images, labels in self._batches(self.epoch, self.step):
            seed = (self.seed, self.info.rank, self.epoch, self.step) if self.train else None
            images = [v.to(self.device, non_blocking=True) for v in images] if isinstance(images, list) \
                else images.to(self.device, non_blocking=True)
            out = self.finish(images, seed), labels.to(self.device, non_blocking=True)
            self.step += 1
            yield out
        if self.train:
            self.epoch, self.step = self.epoch + 1, 0

    def _batches(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (ints, strings, bytes, dicts): safe for `torch.load(weights_only=True)`."""
        return {"version": STATE_VERSION, "backend": self.backend, "epoch": self.epoch, "step": self.step,
                "rank": self.info.rank, "world_size": self.info.world_size, "seed": self.seed,
                "backend_state": self._backend_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` was taken; a different world size restarts the current epoch."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        backend_state = state.get("backend_state")
        if state["world_size"] != self.info.world_size or state.get("backend") != self.backend:
            log.warning("data loader state was saved with world size %s (%s backend); this run has %s (%s): "
                        "exact mid-epoch resume is impossible, restarting epoch %d from its start",
                        state["world_size"], state.get("backend"), self.info.world_size, self.backend, self.epoch)
            self.step, backend_state = 0, None
        elif state.get("seed") != self.seed:
            log.warning("data loader state was saved with seed %s, this run uses %s", state.get("seed"), self.seed)
        self._load_backend_state(backend_state)

    def restart_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (a resume under another world size: no rank state fits)."""
        self.epoch, self.step = epoch, 0
        self._load_backend_state(None)

    def _backend_state(self) -> dict | None:
        return None

    def _load_backend_state(self, state: dict | None) -> None:
        pass

    def close(self) -> None:
        pass

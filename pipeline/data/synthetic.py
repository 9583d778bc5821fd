"""The synthetic backend: one fixed random batch, repeated - measures everything but the data path."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.data.base import Loader


class SyntheticLoader(Loader):
    backend = "synthetic"

    def __init__(self, image_size: int, num_classes: int, **kw) -> None:
        super().__init__(**kw)
        gen = torch.Generator().manual_seed(self.seed)
        self._images = torch.randint(0, 256, (self.batch_size, image_size, image_size, 3), dtype=torch.uint8,
                                     generator=gen)
        self._labels = torch.randint(0, num_classes, (self.batch_size,), dtype=torch.int64, generator=gen)

    def _batches(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(start_step, self.steps_per_epoch):
            yield self._images, self._labels

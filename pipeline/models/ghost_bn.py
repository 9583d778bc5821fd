"""Ghost batch normalisation: BN's training statistics over groups of a GPU's batch (Hoffer et al. 2017).

Used by the large-batch preset (Goyal et al. 2017 kept BN over 32 images per worker): a GPU with 256
images normalises each group of 32 with the group's own mean and variance, as the paper's 8 GPUs with 32
each did. The layers stay `BatchNorm2d` (same parameters and buffers, same names): checkpoints, evaluation
and the model zoo's equivalence with torchvision are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """In training, each group of `group_size` images is normalised exactly as a batch of its own would be:
    with its own statistics, updating the running statistics (and their count) once per group, in order."""

    group_size: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.group_size:
            return super().forward(x)
        normalise = super().forward
        return torch.cat([normalise(group) for group in x.split(self.group_size)])


def use_ghost_batchnorm(model: nn.Module, group_size: int) -> nn.Module:
    """Every BatchNorm2d of `model` takes its training statistics over groups of `group_size` images."""
    for layer in model.modules():
        if type(layer) is nn.BatchNorm2d:
            # The layer keeps its tensors and its place in the model; only its forward changes.
            layer.__class__ = GhostBatchNorm2d
            layer.group_size = group_size
    return model

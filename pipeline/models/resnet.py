"""The two network families of the paper: ImageNet ResNets (Table 1) and CIFAR ResNets (section 4.2).

Plain PyTorch, no distributed code. `shortcut=None` gives the plain counterpart of each net.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.blocks import BasicBlock, Bottleneck, conv3x3

Block = BasicBlock | Bottleneck


def he_init(model: nn.Module, zero_init_residual: bool) -> None:
    """He (Kaiming) normal init for convs, BN as the identity; optionally zero each block's last BN."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) and m.shortcut is not None:
                nn.init.zeros_(m.last_bn.weight)


class _ResNetBase(nn.Module):
    stages: nn.ModuleList

    def blocks(self) -> Iterator[Block]:
        """Every block in forward order (for activation checkpointing and layer-response probes)."""
        for stage in self.stages:
            yield from stage  # type: ignore[misc]

    def _forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class ImageNetResNet(_ResNetBase):
    """7x7/2 stem, 3x3/2 max-pool, four stages of widths 64..512, global average pool, FC."""

    def __init__(
        self,
        block: type[Block],
        blocks_per_stage: Sequence[int],
        num_classes: int = 1000,
        shortcut: str | None = "B",
        bottleneck_stride: str = "1x1",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Sequential] = []
        in_ch = 64
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            layers = []
            for i in range(count):
                stride = 2 if index > 0 and i == 0 else 1
                extra = {"stride_on": bottleneck_stride} if block is Bottleneck else {}
                layers.append(block(in_ch, width, stride, shortcut, **extra))
                in_ch = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_ch, num_classes)
        he_init(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CifarResNet(_ResNetBase):
    """3x3 conv (16 ch), three stages of n basic blocks on 32/16/8 maps with 16/32/64 filters: 6n+2 layers."""

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        shortcut: str | None = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"a CIFAR ResNet needs n >= 1 blocks per stage, got {n}")
        self.stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages: list[nn.Sequential] = []
        in_ch = 16
        for index, width in enumerate((16, 32, 64)):
            layers = []
            for i in range(n):
                stride = 2 if index > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride, shortcut))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(64, num_classes)
        he_init(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

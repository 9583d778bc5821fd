"""Residual and plain building blocks of the paper, with the three shortcut options of Table 3.

- A: identity; where dimensions increase, subsample and zero-pad the new channels (no parameters).
- B: a projection (1x1 conv + BN) where dimensions change, identity elsewhere.
- C: a projection on every shortcut.
A plain block is the same stack with no shortcut at all (`shortcut=None`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BN right after each conv has its own shift.
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A where dimensions increase: take every `stride`-th pixel, append zero channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_ch - in_ch
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W, W, H, H, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class Projection(nn.Sequential):
    """Options B and C: a strided 1x1 conv and BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


def make_shortcut(option: str | None, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """The shortcut of one block; None for a plain block."""
    if option is None:
        return None
    changes_shape = stride != 1 or in_ch != out_ch
    if option == "C" or (option == "B" and changes_shape):
        return Projection(in_ch, out_ch, stride)
    if option in ("A", "B"):
        return ZeroPadShortcut(in_ch, out_ch, stride) if changes_shape else nn.Identity()
    raise ValueError(f"unknown shortcut option {option!r}: expected A, B, C or None (plain)")


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and every CIFAR net)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: str | None) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = conv3x3(in_ch, width, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, out_ch), nn.BatchNorm2d(out_ch)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet-50/101/152.

    `stride_on="1x1"` downsamples in the first 1x1 conv, as the paper; "3x3" is torchvision's "v1.5".
    """

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int, shortcut: str | None, stride_on: str = "1x1"
    ) -> None:
        super().__init__()
        if stride_on not in ("1x1", "3x3"):
            raise ValueError(f"bottleneck stride_on must be '1x1' or '3x3', got {stride_on!r}")
        out_ch = width * self.expansion
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1, self.bn1 = conv1x1(in_ch, width, s1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, s3), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, out_ch), nn.BatchNorm2d(out_ch)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)

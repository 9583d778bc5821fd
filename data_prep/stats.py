"""Pixel statistics (0-255 scale): per-channel mean/std and the per-pixel mean image.

ImageNet-sized sets use a deterministic sample of the train split (every k-th image in key order),
decoded small (JPEG draft mode), and accumulate sums that merge across shards and tasks; their mean
image is the mean of the same sample's centre views (shorter side 256, central 224x224: the view
the paper's released models subtract their 224x224 mean image from), computed once at merge time.
CIFAR's arrays are in memory, so its statistics are exact over the whole train split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .images import _load, _open, _to_rgb


@dataclass
class PixelSums:
    """Mergeable per-channel sums over pixels: count, sum, sum of squares (float64)."""

    images: int = 0
    pixels: int = 0
    total: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    squares: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def add(self, rgb: np.ndarray) -> None:
        """Accumulate an HxWx3 uint8 image."""
        flat = rgb.reshape(-1, 3).astype(np.float64)
        self.images += 1
        self.pixels += flat.shape[0]
        self.total = [a + b for a, b in zip(self.total, flat.sum(0).tolist())]
        self.squares = [a + b for a, b in zip(self.squares, (flat * flat).sum(0).tolist())]

    def merge(self, other: PixelSums) -> None:
        self.images += other.images
        self.pixels += other.pixels
        self.total = [a + b for a, b in zip(self.total, other.total)]
        self.squares = [a + b for a, b in zip(self.squares, other.squares)]

    def mean_std(self) -> tuple[list[float], list[float]]:
        if not self.pixels:
            return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        mean = [t / self.pixels for t in self.total]
        std = [max(s / self.pixels - m * m, 0.0) ** 0.5 for s, m in zip(self.squares, mean)]
        return mean, std

    def to_dict(self) -> dict:
        return {"images": self.images, "pixels": self.pixels, "total": self.total, "squares": self.squares}

    @classmethod
    def from_dict(cls, d: dict | None) -> PixelSums:
        return cls(**d) if d else cls()


def exact_stats(images: np.ndarray) -> tuple[list[float], list[float], np.ndarray]:
    """(mean, std, mean image) of an NxHxWx3 uint8 array, computed exactly (float64 accumulation)."""
    n = images.shape[0]
    mean_image = np.zeros(images.shape[1:], np.float64)
    sq = np.zeros(3, np.float64)
    for i in range(0, n, 4096):  # chunks: never a float64 copy of the whole set
        chunk = images[i:i + 4096].astype(np.float64)
        mean_image += chunk.sum(0)
        sq += (chunk * chunk).sum((0, 1, 2))
    mean_image /= max(n, 1)
    pixels = max(n, 1) * images.shape[1] * images.shape[2]
    mean = mean_image.mean((0, 1))
    std = np.sqrt(np.maximum(sq / pixels - mean * mean, 0.0))
    return mean.tolist(), std.tolist(), mean_image.astype(np.float32)


MEAN_IMAGE_SIDE = 224  # the side of the ImageNet mean image (the paper's crop)
MEAN_IMAGE_RESIZE = 256  # the shorter side its centre views are cut from (the standard centre crop)


def center_view(data: bytes, side: int = MEAN_IMAGE_SIDE, resize: int = MEAN_IMAGE_RESIZE) -> np.ndarray:
    """The centre view of an encoded image as uint8 side x side x 3: shorter side resized to `resize`,
    central `side` crop. Computed as the loaders' centre view is (pipeline.data.augment.center_window):
    the window in source pixels, resized alone (bilinear), JPEG decoded in draft mode where it shrinks."""


    img = _open(data)
    w, h = img.size
    crop = min(side * min(h, w) / resize, float(min(h, w)))
    x0, y0 = (w - crop) / 2, (h - crop) / 2
    if img.format == "JPEG":
        img.draft("RGB", (max(1, int(w * side / crop)), max(1, int(h * side / crop))))
    sx, sy = img.size[0] / w, img.size[1] / h  # draft may have shrunk the decoded image
    rgb = _to_rgb(_load(img, img.format or "image"))
    box = (x0 * sx, y0 * sy, (x0 + crop) * sx, (y0 + crop) * sy)
    return np.asarray(rgb.resize((side, side), Image.BILINEAR, box=box))


def mean_of_center_views(images: Iterable[bytes]) -> tuple[np.ndarray | None, int]:
    """(float32 224x224x3 mean of the centre views, 0-255; how many images), (None, 0) for none."""
    total, n = np.zeros((MEAN_IMAGE_SIDE, MEAN_IMAGE_SIDE, 3), np.float64), 0
    for data in images:
        total += center_view(data)
        n += 1
    return (total / n).astype(np.float32) if n else None, n

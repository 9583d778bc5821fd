"""What each augmentation means, written once for both backends.

A loader's work is split in two:
- geometry, per sample, in the backend (DALI or PIL workers): which window of the *source* image is
  cropped, resized to the output side and maybe flipped. Both backends draw from the same
  distributions defined here; the crop is computed in source coordinates so only the window is
  decoded/resized - the paper's "resize shorter side to S in [256, 480], crop 224" gives exactly the
  same pixels as resizing the whole image first, for a fraction of the work;
- photometry and layout, per batch, on the training device (`finish`): uint8 NHWC -> float NCHW,
  PCA lighting noise, mean subtraction (and, with `per_channel`, division by the std), CIFAR's pad-and-crop.
  Its randomness comes from a generator seeded by (seed, rank, epoch, step), so a resumed loader
  draws the same noise with no state to save.

Normalisation (`data.normalize`, 0-255 scale, statistics from the manifest):
- per_pixel_mean (the paper's "per-pixel mean subtracted"): x - the mean image, no division. CIFAR: the
  exact 32x32 mean of the train split. ImageNet: the 224x224 mean of the centre views of data_prep's
  sample, subtracted from every view of its size after the crop and flip (training crops, the centre
  crop, each of the ten crops), as Caffe subtracts its mean image from the output crop; views of
  another size (multiscale whole images) subtract the mean image's per-channel average, since a
  centre-view mean says nothing about where a differently framed view's pixels lie.
- per_channel: (x - mean) / std per channel.
Lighting noise is added before either: (x + light - mean) / std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# AlexNet's PCA of ImageNet RGB (0-1 scale), the standard "lighting" constants.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], dtype=np.float32)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)

Window = tuple[float, float, float, float]  # x0, y0, width, height in source pixels


@dataclass(frozen=True)
class Geometry:
    """How the backend turns an encoded image into an `out x out` uint8 view (or the source as is)."""

    # paper | rrc | center | none (decode only, CIFAR) | tencrop (shorter side resize_min, 4 corners +
    # centre, each also flipped: 10 views) | multiscale (the whole image at each shorter side in `scales`)
    kind: str
    out: int  # output side (0 for `none` and `multiscale`)
    resize_min: int = 256
    resize_max: int = 480
    rrc_min_scale: float = 0.08
    flip: bool = False
    scales: tuple[int, ...] = ()


def paper_window(h: int, w: int, rng: np.random.Generator, g: Geometry) -> Window:
    """The paper's scale augmentation in source coordinates.

    Shorter side resized to S ~ U[resize_min, resize_max]: scale = S / min(h, w); an `out` crop of the
    resized image is an `out / scale` square of the source, placed uniformly.
    """
    s = rng.uniform(g.resize_min, g.resize_max)
    side = min(g.out * min(h, w) / s, float(min(h, w)))
    return (rng.uniform() * (w - side), rng.uniform() * (h - side), side, side)


def rrc_window(h: int, w: int, rng: np.random.Generator, g: Geometry) -> Window:
    """Random-resized-crop (Inception / torchvision): area in [min_scale, 1], aspect in [3/4, 4/3]."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(g.rrc_min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            return (rng.uniform() * (w - cw), rng.uniform() * (h - ch), cw, ch)
    side = float(min(h, w))  # fallback: the central square, as torchvision's is close to
    return ((w - side) / 2, (h - side) / 2, side, side)


def center_window(h: int, w: int, g: Geometry) -> Window:
    """Evaluation: shorter side resized to `resize_min` (256), central `out` (224) crop - in source pixels."""
    side = min(g.out * min(h, w) / g.resize_min, float(min(h, w)))
    return ((w - side) / 2, (h - side) / 2, side, side)


def sample_window(h: int, w: int, rng: np.random.Generator, g: Geometry) -> Window:
    if g.kind == "paper":
        return paper_window(h, w, rng, g)
    if g.kind == "rrc":
        return rrc_window(h, w, rng, g)
    if g.kind == "center":
        return center_window(h, w, g)
    return (0.0, 0.0, float(w), float(h))


TENCROP_POSITIONS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))  # (x, y) of each crop


def tencrop_boxes(h: int, w: int, side: int) -> list[tuple[int, int, int, int]]:
    """The five `side` crops (left, top, right, bottom) of an h x w image; each is also used flipped."""
    return [(round(px * (w - side)), round(py * (h - side)), round(px * (w - side)) + side,
             round(py * (h - side)) + side) for px, py in TENCROP_POSITIONS]


def shorter_side_size(h: int, w: int, shorter: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to `shorter`, keeping the aspect ratio."""
    scale = shorter / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def geometry_for(augmentation: str, train: bool, image_size: int, resize_min: int, resize_max: int,
                 rrc_min_scale: float, protocol: str = "center", scales: Sequence[int] = ()) -> Geometry:
    """The backend's geometry for a config: CIFAR decodes only (its crop happens in `finish`).

    Evaluation (`train` False) follows `protocol`: center (shorter side `resize_min`, central
    `image_size` crop), tencrop, or multiscale (whole images at each of `scales`). CIFAR's only
    evaluation view is the original 32x32 image.
    """
    if augmentation in ("cifar", "none") and image_size <= 32:
        if not train and protocol != "center":
            # Silently scoring the single view under another protocol's name would mislabel a result.
            raise ValueError(f"the {protocol} protocol needs ImageNet-style images; CIFAR-sized data "
                             f"(image_size {image_size}) is evaluated on its one {image_size}x{image_size} view: "
                             "use the center protocol")
        return Geometry("none", 0)
    if not train and protocol == "tencrop":
        return Geometry("tencrop", image_size, resize_min, resize_max)
    if not train and protocol == "multiscale":
        if not scales:
            raise ValueError("the multiscale protocol needs its shorter sides (eval.scales)")
        return Geometry("multiscale", 0, scales=tuple(int(v) for v in scales))
    if not train or augmentation == "none":
        return Geometry("center", image_size, resize_min, resize_max)
    if augmentation == "paper":
        return Geometry("paper", image_size, resize_min, resize_max, flip=True)
    if augmentation == "rrc":
        return Geometry("rrc", image_size, rrc_min_scale=rrc_min_scale, flip=True)
    raise ValueError(f"data.augmentation {augmentation!r} needs image_size <= 32 (CIFAR); got {image_size}")


@dataclass(frozen=True, eq=False)
class Normalize:
    """Normalisation with lighting noise, for backends that apply it per sample (DALI): views of the mean
    image's size get (x + light - mean_image) / std, other views (x + light - mean) / std."""

    mean: tuple[float, float, float]  # per channel; with a mean image, its per-channel average
    std: tuple[float, float, float]
    pca_lighting: float
    mean_image: np.ndarray | None = None  # float32 HxWx3, 0-255 (per_pixel_mean)

    def mean_image_for(self, h: int, w: int) -> np.ndarray | None:
        """The mean image when an h x w view subtracts it pixel by pixel, else None (per-channel mean)."""
        if self.mean_image is not None and self.mean_image.shape[:2] == (h, w):
            return self.mean_image
        return None


@dataclass(frozen=True)
class Finish:
    """The per-batch, on-device half of the augmentation (see the module docstring)."""

    mean: torch.Tensor  # (3,), 0-255; with a mean image, its per-channel average (for views of other sizes)
    std: torch.Tensor  # (3,)
    pca_lighting: float = 0.0  # std of the lighting coefficients; 0: off
    cifar_pad: int = 0  # >0: pad, random crop back to size, random flip (CIFAR training)
    dtype: torch.dtype = torch.float32
    mean_image: torch.Tensor | None = None  # (3, H, W), 0-255: subtracted from H x W views instead of `mean`

    def __call__(self, images: torch.Tensor, seed: tuple[int, ...] | None) -> torch.Tensor:
        """uint8 NHWC (any device) -> normalised NCHW of `dtype`; `seed` None means no randomness.

        Float input was normalised by the backend already (DALI's fused crop_mirror_normalize): cast only.
        """
        if isinstance(images, (list, tuple)):  # multiscale: one tensor per scale
            return [self(v, seed) for v in images]
        if images.is_floating_point():
            return images if images.dtype == self.dtype else images.to(self.dtype)
        if images.dim() == 5:  # tencrop: (N, views, H, W, C)
            n, v = images.shape[:2]
            return self(images.flatten(0, 1), seed).unflatten(0, (n, v))
        n, h, w, _ = images.shape
        gen = _generator(seed) if seed is not None else None
        # One strided pass converts and transposes; the normalisation is then one fused multiply-add:
        # (x + lighting - mean) / std = x * (1 / std) + (lighting - mean) / std.
        x = torch.empty((n, 3, h, w), dtype=torch.float32, device=images.device)
        x.copy_(images.permute(0, 3, 1, 2))
        inv_std = (1.0 / self.std.to(x.device)).view(1, 3, 1, 1)
        light = None
        if self.pca_lighting > 0 and gen is not None:
            light = lighting(n, self.pca_lighting, gen).to(x.device).view(n, 3, 1, 1)
        if self.mean_image is None or tuple(self.mean_image.shape[1:]) != (h, w):
            offset = -self.mean.to(x.device).view(1, 3, 1, 1).expand(n, 3, 1, 1)
            if light is not None:
                offset = offset + light
            x.mul_(inv_std).add_(offset * inv_std)
        else:  # per-pixel mean image: (x - mean_image + light) / std
            x.sub_(self.mean_image.to(x.device).unsqueeze(0))
            if light is not None:
                x.add_(light)
            x.mul_(inv_std)
        if self.cifar_pad and gen is not None:
            x = pad_crop_flip(x, self.cifar_pad, gen)
        return x if self.dtype == torch.float32 else x.to(self.dtype)


def lighting(n: int, std: float, gen: torch.Generator) -> torch.Tensor:
    """AlexNet PCA lighting: per sample an RGB offset V @ (alpha * eigval) * 255, alpha ~ N(0, std)."""
    return lighting_offsets(torch.randn(n, 3, generator=gen) * std)


def lighting_offsets(alpha: torch.Tensor) -> torch.Tensor:
    """(N, 3) lighting coefficients -> (N, 3) RGB offsets on the 0-255 scale: V @ (alpha * eigval) * 255."""
    return (alpha.float() * torch.from_numpy(PCA_EIGVAL)) @ torch.from_numpy(PCA_EIGVEC).T * 255.0


def pad_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """CIFAR: zero-pad (zero = the mean, as the mean is already subtracted), random crop, random flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flip = torch.rand(n, generator=gen).to(x.device) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = torch.arange(w, device=x.device).view(1, w).expand(n, w)
    cols = torch.where(flip.view(n, 1), w - 1 - cols, cols) + dx.view(n, 1)
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, 3, h, w))


def _generator(seed: tuple[int, ...]) -> torch.Generator:
    # Mix the tuple into one 63-bit seed through numpy's SeedSequence (well spread, deterministic).
    value = int(np.random.SeedSequence([int(v) for v in seed]).generate_state(2, np.uint64)[0]) >> 1
    return torch.Generator().manual_seed(value)

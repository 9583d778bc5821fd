"""The CPU half of DALI's ImageNet views: each decoded window resized, flipped and normalised with torch.

On a CPU-only machine DALI reads, draws the random window, flip and lighting, and decodes only the window
(all checkpointed with the pipeline); this module turns the batch of windows into finished float NCHW
images. Two reasons it is not DALI's own `resize` + `crop_mirror_normalize` there:
- torch's uint8 antialiased bilinear resize is ~3x faster than DALI 2.4's CPU resize (0.4 vs 1.3 ms per
  ImageNet window into 224x224 on one core);
- it runs in this process's thread pool while DALI's threads decode the next batches, where DALI's CPU
  operators run one after another (a resize inside the pipeline waits for the decode and stalls it).
The arithmetic is the GPU pipeline's: bilinear with antialiasing, horizontal flip, (x + light - mean) / std,
where `mean` is the mean image for views of its size (data.normalize=per_pixel_mean), else per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from pipeline.data.augment import Normalize


class WindowFinish:
    """Resize + flip + normalise a batch of HWC uint8 windows on `threads` threads (started on first use)."""

    def __init__(self, out: int, normalize: Normalize, threads: int) -> None:
        self.out, self.threads = out, max(1, threads)
        self.inv_std = 1.0 / torch.tensor(normalize.std, dtype=torch.float32).view(1, 3)
        image = normalize.mean_image_for(out, out)
        # With a mean image of the output's size, it is subtracted per pixel and the bias holds the lighting only.
        self.mean_image = None if image is None else torch.from_numpy(image).permute(2, 0, 1).contiguous()
        mean = (0.0, 0.0, 0.0) if image is not None else normalize.mean
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3)
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, windows: Sequence[torch.Tensor], mirror: torch.Tensor | None,
                 light: torch.Tensor | None) -> torch.Tensor:
        """windows: HWC uint8, any sizes; mirror: (N,) 0/1 or None; light: (N, 3) 0-255 offsets or None."""
        n = len(windows)
        offset = -self.mean.expand(n, 3) if light is None else light.view(n, 3).float() - self.mean
        bias = (offset * self.inv_std).view(n, 3, 1, 1)  # (x + light - mean) / std = x / std + bias
        flips: list[bool] = [False] * n if mirror is None else [bool(v) for v in mirror.view(-1).tolist()]
        images = torch.empty((n, 3, self.out, self.out), dtype=torch.float32)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="window-finish")
        # One task per thread, samples dealt round-robin (fewer hand-offs than one task per sample);
        # list() waits for all of them and re-raises the first error.
        def finish_rows(rows: range) -> None:
            for i in rows:
                self._one(windows[i], flips[i], bias[i], images[i])

        list(self._pool.map(finish_rows, [range(k, n, self.threads) for k in range(min(self.threads, n))]))
        return images

    def _one(self, window: torch.Tensor, flip: bool, bias: torch.Tensor, dst: torch.Tensor) -> None:
        # HWC memory seen as a channels-last (1, C, H, W): the layout torch's fast uint8 resize kernel takes.
        x = window.permute(2, 0, 1).unsqueeze(0)
        # Antialiasing changes nothing when upsampling (the same pixels, measured) but costs 40% more there.
        shrinks = max(window.shape[0], window.shape[1]) > self.out
        x = torch.nn.functional.interpolate(x, size=(self.out, self.out), mode="bilinear", antialias=shrinks)[0]
        if flip:
            x = x.flip(2)
        dst.copy_(x)  # uint8 channels-last -> float CHW in one pass
        if self.mean_image is not None:
            dst.sub_(self.mean_image)
        dst.mul_(self.inv_std.view(3, 1, 1)).add_(bias)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

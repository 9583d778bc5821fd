"""The pure-PyTorch backend: PIL decoding in DataLoader worker processes, reading the same shards.

The sample order is a pure function of (seed, epoch, rank), computed from the index files alone:
each epoch the shards are visited in a seeded random order, the resulting stream of N samples is cut
into `world_size` contiguous parts (one per rank, as DALI's reader cuts it), and each rank shuffles
its part through a buffer of `data.shuffle_buffer` samples (as DALI's `initial_fill` does). Reads stay
mostly sequential within a tar, and resuming after k batches simply starts the batch list at k: no
sample is read or decoded to skip ahead. Each sample's augmentation draws from a generator seeded by
(seed, epoch, global sample id), so it does not depend on which worker decodes it, and the workers
persist across epochs (the batch sampler carries the epoch in each key).

Members are read by (offset, size) from the DALI index: the `webdataset` library's streaming reader
offers neither sample-exact sharding across ranks nor skipping without reading.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from pipeline.data.augment import Geometry, sample_window, shorter_side_size, tencrop_boxes
from pipeline.data.base import Loader, rank_range
from pipeline.data.dataset import Split, sample_table
from pipeline.dist.process import ignore_stop_signals, stop_signals_held


def epoch_order(refs_per_shard: Sequence[int], seed: int, epoch: int, rank: int, world_size: int,
                buffer: int, shuffle: bool) -> np.ndarray:
    """Global sample ids (manifest order) this rank reads in `epoch`, in reading order."""
    starts = np.concatenate([[0], np.cumsum(refs_per_shard)])
    shard_ids = np.arange(len(refs_per_shard))
    if shuffle:
        shard_ids = np.random.default_rng([seed, epoch, 0]).permutation(shard_ids)
    stream = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shard_ids]) if len(shard_ids) else \
        np.zeros(0, dtype=np.int64)
    lo, hi = rank_range(len(stream), rank, world_size)
    part = stream[lo:hi]
    if not shuffle or buffer <= 1:
        return part
    return buffer_shuffle(part, buffer, np.random.default_rng([seed, epoch, 1, rank]))


def buffer_shuffle(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A reservoir shuffle: fill a buffer of `size`, then repeatedly emit a random slot and refill it."""
    out = np.empty_like(items)
    buf = list(items[:size])
    slots = rng.integers(0, max(len(buf), 1), size=max(len(items) - size, 0))  # drawn at once: fast
    n = 0
    for item, j in zip(items[size:], slots):
        out[n], buf[j] = buf[j], item
        n += 1
    order = rng.permutation(len(buf))
    out[n:] = np.asarray(buf, dtype=items.dtype)[order] if buf else out[n:]
    return out


class _SampleReader(torch.utils.data.Dataset):
    """Decodes the sample keyed (epoch, global id): the key alone fixes its augmentation, so the dataset
    never changes and one set of persistent workers serves every epoch. Open files are per worker."""

    def __init__(self, split: Split, table: np.ndarray, geometry: Geometry, seed: int) -> None:
        self.tars = [str(s.tar) for s in split.shards]
        # One int64 row per sample (shard, image offset, size, label offset, size): compact, and shared
        # copy-on-write with forked workers without Python objects whose refcounts would copy the pages.
        self.table, self.geometry, self.seed = table, geometry, seed
        self._files: dict[int, io.BufferedReader] = {}

    def __len__(self) -> int:
        return len(self.table)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.tars[shard], "rb")
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise RuntimeError(f"{self.tars[shard]}: truncated (wanted {size} bytes at {offset})")
        return data

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, int]:
        epoch, gid = key
        shard, image_at, image_size, label_at, label_size = (int(v) for v in self.table[gid])
        try:
            label = int(self._read(shard, label_at, label_size).decode("ascii").strip())
            rng = np.random.default_rng([self.seed, epoch, 2, gid])
            image = decode_view(self._read(shard, image_at, image_size), self.geometry, rng)
        except Exception as e:  # name the file and the place: a bad sample must be findable
            raise RuntimeError(f"{self.tars[shard]}: cannot read the sample at byte {image_at}: {e}") from e
        return image, label


def decode_view(data: bytes, g: Geometry, rng: np.random.Generator):
    """Decode only what the geometry needs: JPEG draft mode shrinks by 1/2..1/8 in the DCT where the
    window is downscaled that much anyway; then crop the window and resize it alone.

    Returns uint8 HWC; tencrop: (10, H, W, C); multiscale: a tuple of HWC arrays, one per scale."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if g.kind == "none":
        return np.asarray(img.convert("RGB"))
    if g.kind in ("tencrop", "multiscale"):
        return _eval_views(img, g)
    x0, y0, cw, ch = sample_window(h, w, rng, g)
    flip = g.flip and rng.uniform() < 0.5
    if img.format == "JPEG":
        img.draft("RGB", (max(1, int(w * g.out / cw)), max(1, int(h * g.out / ch))))
    sx, sy = img.size[0] / w, img.size[1] / h  # draft may have shrunk the decoded image
    box = (x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy)
    out = img.convert("RGB").resize((g.out, g.out), Image.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def _eval_views(img: Image.Image, g: Geometry):
    w, h = img.size
    img = img.convert("RGB")
    if g.kind == "multiscale":
        return tuple(np.asarray(img.resize(shorter_side_size(h, w, s)[::-1], Image.BILINEAR)) for s in g.scales)
    resized = img.resize(shorter_side_size(h, w, g.resize_min)[::-1], Image.BILINEAR)
    crops = [resized.crop(box) for box in tencrop_boxes(resized.size[1], resized.size[0], g.out)]
    crops += [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]
    return np.stack([np.asarray(c) for c in crops])


def _collate(batch: list[tuple[np.ndarray, int]]):
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    if isinstance(batch[0][0], tuple):  # multiscale (batch of one: sizes differ between images)
        return [torch.from_numpy(np.stack([b[0][k] for b in batch])) for k in range(len(batch[0][0]))], labels
    return torch.from_numpy(np.stack([b[0] for b in batch])), labels


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, split: Split, table: np.ndarray | None, geometry: Geometry, shuffle_buffer: int,
                 num_workers: int, **kw) -> None:
        """`table`: the split's `sample_table` (read from its indexes when None)."""
        super().__init__(**kw)
        self.split, self.geometry = split, geometry
        self.shuffle_buffer, self.num_workers = shuffle_buffer, num_workers
        self.table = sample_table(split.sample_refs()) if table is None else table
        self.per_shard = [s.num_samples for s in split.shards]
        self._sampler = _EpochBatches()
        self._dataloader: torch.utils.data.DataLoader | None = None

    def _batches(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(self.per_shard, self.seed, epoch, self.info.rank, self.info.world_size,
                            self.shuffle_buffer, shuffle=self.train)
        b = self.batch_size
        if self.train:
            starts = [k * b for k in range(start_step, self.steps_per_epoch)]
        else:  # every sample of this rank's part once; the last batch may be short
            starts = list(range(0, len(order), b))
        self._sampler.batches = [[(epoch, int(g)) for g in order[k:k + b]] for k in starts]
        if self._sampler.batches:
            with stop_signals_held():  # the workers start here (once: they persist) with SIGTERM blocked
                batches = iter(self._loader())
            yield from batches

    def _loader(self) -> torch.utils.data.DataLoader:
        # Built once: persistent workers start once per run, not once per epoch.
        if self._dataloader is None:
            workers = self.num_workers
            self._dataloader = torch.utils.data.DataLoader(
                _SampleReader(self.split, self.table, self.geometry, self.seed), batch_sampler=self._sampler,
                num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
                worker_init_fn=ignore_stop_signals,  # SLURM's SIGTERM reaches them too: the rank decides
                prefetch_factor=4 if workers else None, persistent_workers=workers > 0)
        return self._dataloader


class _EpochBatches:
    """The batch sampler: the current epoch's batches of (epoch, global id), replaced before each epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

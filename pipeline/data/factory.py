"""`build_loader`: the one way the rest of the project gets data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data_prep.manifest import MANIFEST_NAME
from pipeline.config.schema import DataConfig
from pipeline.data.augment import Finish, Geometry, Normalize, geometry_for
from pipeline.data.base import Loader, local_batch, log, rank_range, train_steps_per_epoch
from pipeline.data.dali_loader import DaliLoader
from pipeline.data.dataset import DatasetError, Split, open_split, read_manifest, sample_table
from pipeline.data.synthetic import SyntheticLoader
from pipeline.data.torch_loader import TorchLoader
from pipeline.dist import DistInfo, from_primary
from pipeline.dist.process import resolve_device

# The synthetic backend without a dataset directory: ImageNet's or CIFAR-10's size.
_SYNTHETIC_SIZES = {False: (1_281_167, 1000), True: (50_000, 10)}  # keyed by "is CIFAR"


def build_loader(data: DataConfig, split: str, info: DistInfo, state: dict | None = None, *,
                 train: bool | None = None, device: torch.device | None = None, seed: int = 0,
                 protocol: str = "center", scales: Sequence[int] = (224, 256, 384, 480, 640),
                 eval_resize: int | None = None) -> Loader:
    """A loader of `split` for this rank: iterate it once per epoch; `len(loader)` is its steps per epoch.

    train: training mode (shuffled, augmented, floor(N / global batch) equal steps on every rank);
        default: `split == data.train_split`. Otherwise evaluation: every sample of the split once
        across ranks, the centre view, batches of `data.eval_batch_per_gpu` (per GPU: the same at any
        world size, so evaluation does not slow down as GPUs are added; the last batch may be short).
    device: where batches are delivered; default the rank's GPU when there is one, else the CPU.
    seed: the run's seed (the order and augmentation of every epoch derive from it).
    protocol: evaluation views (ImageNet): "center"; "tencrop" yields images of shape (B, 10, C, H, W)
        (4 corners + centre of the image resized to shorter side `data.resize_min`, and their flips);
        "multiscale" yields a list of (1, C, H_s, W_s) whole images, one per shorter side in `scales`,
        one sample per batch (the fully-convolutional evaluation of Table 4). Average the scores over
        views / scales per sample; labels are per sample.
    eval_resize: the shorter side before the centre / ten crops (`eval.resize`); default `data.resize_min`.
    state: a `loader.state_dict()` to resume from (or call `load_state_dict` later).
    """
    train = (split == data.train_split) if train is None else train
    device = device or resolve_device("auto", info)
    global_batch = data.batch_size
    batch = local_batch(global_batch, info.world_size, "batch_size") if train else data.eval_batch_per_gpu
    if not train and protocol == "multiscale":
        batch = 1  # whole images differ in size
    dtype = torch.bfloat16 if data.output_dtype == "bfloat16" else torch.float32
    resize_min = data.resize_min if train or eval_resize is None else eval_resize
    geometry = geometry_for(data.augmentation, train, data.image_size, resize_min, data.resize_max,
                            data.rrc_min_scale, protocol, scales)
    common = dict(train=train, info=info, seed=seed, batch_size=batch, device=device)

    if data.backend == "synthetic":
        loader = _synthetic(data, split, info, train, common, dtype)
    else:
        # One rank per job validates the split (every shard's size and index) and, for the torch loader, reads
        # every index into the sample table; the others are given both (one broadcast): a rank's start-up reads
        # nothing that grows with the number of shards.
        table_too = data.backend == "torch"
        ds, table = from_primary(lambda: _validated_split(data.root, split, table_too))
        if train:
            steps = train_steps_per_epoch(ds.num_samples, global_batch)
            if steps == 0:
                raise DatasetError(f"{data.root}: split {split!r} has {ds.num_samples} samples, fewer than one "
                                   f"global batch of {global_batch}")
        else:
            lo, hi = rank_range(ds.num_samples, info.rank, info.world_size)
            steps = -(-(hi - lo) // batch)
        finish = _finish(data, ds, train, dtype)
        common.update(num_samples=ds.num_samples, steps_per_epoch=steps, finish=finish)
        if data.backend == "dali":
            normalize = None
            if geometry.kind != "none":  # the ImageNet views: DALI normalises in the pipeline, fused
                mean_image = None if finish.mean_image is None else finish.mean_image.permute(1, 2, 0).numpy()
                normalize = Normalize(tuple(finish.mean.tolist()), tuple(finish.std.tolist()),  # type: ignore[arg-type]
                                      finish.pca_lighting, mean_image)
            loader = DaliLoader(ds, geometry, data.shuffle_buffer, data.num_threads, data.hw_decoder_load,
                                normalize, **common)
        else:
            loader = TorchLoader(ds, table, geometry, data.shuffle_buffer, data.num_threads, **common)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def evaluation_views(data: DataConfig, split: str, protocol: str = "center",
                     eval_resize: int | None = None) -> tuple[Split, Geometry, Finish]:
    """What an evaluation loader of `split` does to each image, for whoever must do it elsewhere (an export, a
    prediction): the split, the geometry of its views, and the finish that normalises them."""
    if data.backend == "synthetic":
        raise DatasetError("the synthetic backend has no images to describe: set data.root to a prepared dataset "
                           "and data.backend to dali or torch")
    ds = open_split(data.root, split)
    geometry = geometry_for(data.augmentation, False, data.image_size,
                            data.resize_min if eval_resize is None else eval_resize, data.resize_max,
                            data.rrc_min_scale, protocol)
    return ds, geometry, _finish(data, ds, train=False, dtype=torch.float32)


def _validated_split(root: str, split: str, with_table: bool) -> tuple[Split, np.ndarray | None]:
    ds = open_split(root, split)
    return ds, sample_table(ds.sample_refs()) if with_table else None


def dataset_num_classes(data: DataConfig) -> int:
    """The class count the manifest records (the synthetic backend without a dataset: 1000 or 10)."""
    if data.backend == "synthetic":
        try:
            return read_manifest(data.root).num_classes
        except DatasetError:
            return _SYNTHETIC_SIZES[data.image_size <= 32][1]
    return read_manifest(data.root).num_classes


def _finish(data: DataConfig, ds, train: bool, dtype: torch.dtype) -> Finish:
    """The on-device half; its mean, std and mean image are also what DALI's pipeline applies."""
    lighting = data.pca_lighting if train and data.augmentation in ("paper", "rrc") else 0.0
    pad = data.pad if train and data.augmentation == "cifar" else 0
    mean, std, image = _normalisation(data, ds)
    return Finish(mean=torch.tensor(mean, dtype=torch.float32), std=torch.tensor(std, dtype=torch.float32),
                  pca_lighting=lighting, cifar_pad=pad, dtype=dtype,
                  mean_image=None if image is None else torch.from_numpy(image).permute(2, 0, 1).contiguous())


def _normalisation(data: DataConfig, ds) -> tuple[Sequence[float], Sequence[float], np.ndarray | None]:
    """(per-channel mean, std, mean image HxWx3 or None) for `data.normalize` (see augment.py)."""
    if data.normalize == "per_channel":
        return ds.mean, ds.std, None
    image = ds.mean_image()
    if image is not None:  # the paper: x - mean image, no division
        return image.astype(np.float64).mean((0, 1)).tolist(), (1.0, 1.0, 1.0), image
    if data.augmentation in ("cifar", "none") and data.image_size <= 32:
        return ds.mean, (1.0, 1.0, 1.0), None  # a CIFAR-like dataset without a mean image: its channel mean
    # An ImageNet-style dataset from a data_prep that wrote no mean image: what it was normalised with then.
    log.warning("%s: no mean image (written by an older data_prep), so data.normalize=per_pixel_mean falls back "
                "to per_channel ((x - mean) / std). Re-run the same `python -m data_prep` command to add it "
                "(written shards are reused), or set data.normalize=per_channel to silence this.",
                ds.root / MANIFEST_NAME)
    return ds.mean, ds.std, None


def _synthetic(data: DataConfig, split: str, info: DistInfo, train: bool, common: dict, dtype: torch.dtype) -> Loader:
    cifar = data.image_size <= 32
    num_samples, num_classes = _SYNTHETIC_SIZES[cifar]
    try:
        manifest = read_manifest(data.root)
        num_samples = manifest.splits[split].num_samples
        num_classes = manifest.num_classes
    except (DatasetError, KeyError):
        pass
    if train:
        steps = max(1, num_samples // data.batch_size)
    else:
        lo, hi = rank_range(num_samples, info.rank, info.world_size)
        steps = -(-(hi - lo) // common["batch_size"])
    finish = Finish(mean=torch.full((3,), 127.5), std=torch.full((3,), 64.0), dtype=dtype)
    return SyntheticLoader(data.image_size, num_classes, num_samples=num_samples, steps_per_epoch=steps,
                           finish=finish, **common)

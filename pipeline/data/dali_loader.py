"""The DALI backend: one pipeline definition for GPU ("mixed" nvJPEG/hardware decode) and CPU-only runs.

`fn.readers.webdataset` reads the manifest's shards with their index files; rank r reads DALI shard r
of `world_size` (DALI moves each rank to the next shard every epoch, so ranks see different data
across epochs yet stay disjoint within one). Training shuffles through a buffer of
`data.shuffle_buffer` samples and pads the shard's last batch; the wrapper stops every rank after the
same `steps_per_epoch` batches and drains the rest of DALI's epoch (at most a couple of batches), so
epochs stay aligned with DALI's and no rank waits for another. Evaluation pads the last batch and the
iterator's PARTIAL policy drops the padding: each sample is counted exactly once.

Geometry follows `augment.Geometry`: the crop window is computed from the encoded image's shape
(`fn.peek_image_shape`) in source coordinates, and only that window is decoded
(`fn.decoders.image_slice`) and resized. On a GPU the pipeline ends in finished float batches (resize,
flip, lighting and normalisation on the GPU; a per-pixel mean image is subtracted after the fused
crop_mirror_normalize, whose mean is per channel only). On the CPU it ends at the decoded windows, with the flip
and lighting draws beside them, and `window_finish` resizes and normalises them with torch while DALI
decodes the next batches (see that module for why). Exact resume: `enable_checkpointing=True`; the
iterator's checkpoint (reader position, random-op states, iterator counters) is the backend state, and
every random draw is DALI's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipeline.data.augment import (
    PCA_EIGVAL,
    PCA_EIGVEC,
    RRC_RATIO,
    TENCROP_POSITIONS,
    Geometry,
    Normalize,
    lighting_offsets,
)
from pipeline.data.base import Loader, log
from pipeline.data.dali_cpu_finish import WindowFinish
from pipeline.data.dataset import Split

READER = "Reader"
LABEL_BYTES = 12  # labels arrive as ASCII digits, zero-padded to this many bytes
FLIP_PROBABILITY = 0.5
PIPELINE_OPTIONS = {"prefetch_queue_depth": 2}  # executor settings (deeper queues measured no faster on CPU)
# On a GPU, too, decode only the crop window (nvJPEG). False: decode whole images, which lets the hardware
# JPEG decoder (A100/H100/H200) take `hw_decoder_load` of them, and crop inside the resize. On an H200
# with 16 CPU threads the two measured the same within run-to-run noise
# (benchmarks/results/loader_throughput.md), so the GPU keeps the CPU's geometry.
GPU_ROI_DECODE = True


def build_pipeline(split: Split, geometry: Geometry, *, train: bool, batch_size: int, shard_id: int,
                   num_shards: int, seed: int, num_threads: int, shuffle_buffer: int, device_id: int | None,
                   hw_decoder_load: float, normalize: Normalize | None = None,
                   checkpoint: bytes | None = None, crop_in_resize: bool | None = None,
                   window_outputs: bool = False):
    """The DALI pipeline; `device_id=None` runs it on the CPU (decode included).

    crop_in_resize: decode whole images and crop the window inside the resize, rather than decode the
    window only; default: on the GPU unless `GPU_ROI_DECODE`.
    window_outputs (a crop view with `normalize`): end at the decoded windows (uint8 HWC, any size),
    followed by the flip draws (if `geometry.flip`), the lighting coefficients alpha (if lighting) and
    the labels, for `window_finish.WindowFinish`.

    Otherwise, with `normalize` (the ImageNet views) the pipeline ends in float CHW, normalised, flipped
    and lit; without (CIFAR) in uint8 HWC for `augment.Finish`.
    """
    from nvidia.dali import fn, pipeline_def, types  # DALI: only when its loader is built
    from nvidia.dali import math as dmath

    gpu = device_id is not None
    if crop_in_resize is None:
        crop_in_resize = gpu and not GPU_ROI_DECODE

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  enable_checkpointing=True, checkpoint=checkpoint, **PIPELINE_OPTIONS)
    def pipe():
        encoded, label = fn.readers.webdataset(
            paths=[str(s.tar) for s in split.shards], index_paths=[str(s.index) for s in split.shards],
            ext=[split.image_ext, split.label_ext], missing_component_behavior="error", name=READER,
            shard_id=shard_id, num_shards=num_shards, random_shuffle=train, initial_fill=shuffle_buffer,
            pad_last_batch=True, stick_to_shard=not train, seed=seed)
        decode = dict(device="mixed" if gpu else "cpu", output_type=types.RGB)
        if gpu:
            decode["hw_decoder_load"] = hw_decoder_load
        if geometry.kind in ("tencrop", "multiscale"):
            views = _eval_views(fn, types, fn.decoders.image(encoded, **decode), geometry, normalize, gpu)
            return (*views, fn.pad(label, axes=[0], shape=[LABEL_BYTES], fill_value=0))
        resize = dict(size=[geometry.out, geometry.out], interp_type=types.INTERP_LINEAR, antialias=True)
        if not gpu:  # a small minibatch spreads one batch's CPU resize over all threads (default: one call)
            resize["minibatch_size"] = 2
        if geometry.kind == "none":
            images = fn.decoders.image(encoded, **decode)
        elif crop_in_resize:
            # The hardware JPEG decoder decodes whole images only: decode whole, crop inside the resize.
            images = fn.decoders.image(encoded, **decode)
            if geometry.kind == "rrc":
                images = fn.random_resized_crop(images, random_area=[geometry.rrc_min_scale, 1.0],
                                                random_aspect_ratio=list(RRC_RATIO), num_attempts=10, **resize)
            else:
                x, y, w, h = _window(fn, dmath, types, encoded, geometry)
                images = fn.resize(images, roi_start=fn.stack(y, x), roi_end=fn.stack(y + h, x + w),
                                   roi_relative=True, **resize)
        else:  # decode only the window, then resize it
            if geometry.kind == "rrc":
                images = fn.decoders.image_random_crop(encoded, random_area=[geometry.rrc_min_scale, 1.0],
                                                       random_aspect_ratio=list(RRC_RATIO), num_attempts=10,
                                                       **decode)
            else:
                x, y, w, h = _window(fn, dmath, types, encoded, geometry)
                images = fn.decoders.image_slice(encoded, fn.stack(x, y), fn.stack(w, h), **decode)
            if window_outputs:
                draws = [fn.random.coin_flip(probability=FLIP_PROBABILITY)] if geometry.flip else []
                if normalize.pca_lighting > 0:
                    draws.append(fn.random.normal(shape=[3]) * normalize.pca_lighting)
                return (images, *draws, fn.pad(label, axes=[0], shape=[LABEL_BYTES], fill_value=0))
            images = fn.resize(images, **resize)
        if normalize is not None:  # fused: flip, lighting, (x - mean) / std, HWC -> CHW, float
            mirror = fn.random.coin_flip(probability=FLIP_PROBABILITY) if geometry.flip else 0
            image_mean = normalize.mean_image_for(geometry.out, geometry.out)
            images = fn.crop_mirror_normalize(images, mirror=mirror, std=list(normalize.std),
                                              mean=_mean_with_lighting(fn, types, normalize, image_mean is None),
                                              output_layout="CHW", dtype=types.FLOAT)
            if image_mean is not None:  # after the flip, as `augment.Finish` subtracts it
                images = images - _scaled_mean_image(types, normalize, image_mean, gpu)
        label = fn.pad(label, axes=[0], shape=[LABEL_BYTES], fill_value=0)
        return images, label

    return pipe()


def _eval_views(fn, types, images, g: Geometry, n: Normalize, gpu: bool) -> list:
    """tencrop: one (10, C, H, W) output; multiscale: one whole-image output per scale (batch of 1).

    Whole images (multiscale) subtract the per-channel mean; each ten-crop view the mean image if it has the
    view's size."""
    norm = dict(mean=list(n.mean), std=list(n.std), output_layout="CHW", dtype=types.FLOAT)
    if g.kind == "multiscale":
        return [fn.crop_mirror_normalize(fn.resize(images, resize_shorter=s, antialias=True), **norm)
                for s in g.scales]
    resized = fn.resize(images, resize_shorter=g.resize_min, antialias=True)
    image_mean = n.mean_image_for(g.out, g.out)
    if image_mean is not None:
        norm["mean"] = [0.0, 0.0, 0.0]
    views = [fn.crop_mirror_normalize(resized, crop=(g.out, g.out), crop_pos_x=px, crop_pos_y=py, mirror=m, **norm)
             for m in (0, 1) for px, py in TENCROP_POSITIONS]
    if image_mean is not None:
        scaled = _scaled_mean_image(types, n, image_mean, gpu)
        views = [v - scaled for v in views]
    return [fn.stack(*views)]


def _scaled_mean_image(types, n: Normalize, image: np.ndarray, gpu: bool):
    """The mean image as a CHW constant divided by the std: (x - m) / s = x / s - m / s after a CMN by s."""
    chw = (image.transpose(2, 0, 1) / np.asarray(n.std, dtype=np.float32).reshape(3, 1, 1)).astype(np.float32)
    return types.Constant(np.ascontiguousarray(chw), device="gpu" if gpu else "cpu")


def _mean_with_lighting(fn, types, n: Normalize, channel_mean: bool = True):
    """The per-sample mean minus AlexNet's lighting offset: (x + light - mean) = (x - (mean - light)).
    channel_mean False: the mean image is subtracted apart, so only the lighting (mean 0 here)."""
    mean = n.mean if channel_mean else (0.0, 0.0, 0.0)
    if n.pca_lighting <= 0:
        return list(mean)
    alpha = fn.random.normal(shape=[3]) * n.pca_lighting
    light = None
    for j in range(3):  # V @ (alpha * eigval) * 255, one eigenvector (column of V) at a time
        column = types.Constant((PCA_EIGVEC[:, j] * PCA_EIGVAL[j] * 255.0).astype(np.float32), device="cpu")
        term = alpha[j] * column
        light = term if light is None else light + term
    return types.Constant(np.asarray(mean, dtype=np.float32), device="cpu") - light


def _window(fn, dmath, types, encoded, g: Geometry):
    """The window of `augment.paper_window` / `center_window`, normalised: x, y, width, height."""
    shape = fn.cast(fn.peek_image_shape(encoded), dtype=types.FLOAT)
    h, w = shape[0], shape[1]
    short = dmath.min(h, w)
    if g.kind == "paper":
        target = fn.random.uniform(range=[float(g.resize_min), float(g.resize_max)])
        side = dmath.min(g.out * short / target, short)
        ux, uy = fn.random.uniform(range=[0.0, 1.0]), fn.random.uniform(range=[0.0, 1.0])
        x0, y0 = ux * (w - side), uy * (h - side)
    else:  # center
        side = dmath.min(g.out * short / g.resize_min, short)
        x0, y0 = (w - side) * 0.5, (h - side) * 0.5
    return x0 / w, y0 / h, side / w, side / h


def decode_labels(raw: torch.Tensor) -> torch.Tensor:
    """ASCII decimal bytes (zero-padded rows) -> int64 labels, vectorised."""
    raw = raw.to(torch.int64).view(raw.shape[0], -1)
    digit = (raw >= 48) & (raw <= 57)
    # Only the leading run of digits counts (a trailing newline or padding ends the number).
    run = torch.cumprod(digit.to(torch.int64), dim=1)
    length = run.sum(dim=1, keepdim=True)
    pos = torch.arange(raw.shape[1], device=raw.device).view(1, -1)
    power = torch.where(run.bool(), length - 1 - pos, torch.zeros_like(pos))
    return ((raw - 48) * run * (10 ** power)).sum(dim=1)


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, split: Split, geometry: Geometry, shuffle_buffer: int, num_threads: int,
                 hw_decoder_load: float, normalize: Normalize | None, *, device: torch.device, **kw) -> None:
        super().__init__(device=device, **kw)
        if geometry.kind != "none" and normalize is None:
            raise ValueError("DALI's ImageNet views normalise in the pipeline: pass `normalize`")
        self.split, self.geometry, self.normalize = split, geometry, normalize
        self.shuffle_buffer, self.num_threads, self.hw_decoder_load = shuffle_buffer, num_threads, hw_decoder_load
        self._iterator = None
        # On the CPU, the crop views are resized and normalised by torch, beside DALI (window_finish).
        self._window_finish = None
        if device.type != "cuda" and geometry.kind in ("paper", "rrc", "center"):
            self._window_finish = WindowFinish(geometry.out, normalize, num_threads)
        self._checkpoint: bytes | None = None  # to restore from, at the next (lazy) build
        self._base_epoch = 0  # the epoch the pipeline started at: part of its seed

    # The pipeline is built at first use, so `load_state_dict` after construction costs nothing extra.
    def _ensure_iterator(self):
        if self._iterator is None:
            from nvidia.dali.plugin.base_iterator import LastBatchPolicy  # DALI: only when its loader is built
            from nvidia.dali.plugin.pytorch import DALIGenericIterator, DALIRaggedIterator

            device_id = (self.device.index or 0) if self.device.type == "cuda" else None
            seed = (self.seed * 1_000_003 + self.info.rank * 7919 + self._base_epoch) % (2 ** 31)
            pipe = build_pipeline(
                self.split, self.geometry, train=self.train, batch_size=self.batch_size,
                shard_id=self.info.rank, num_shards=self.info.world_size, seed=seed,
                num_threads=self.num_threads, shuffle_buffer=self.shuffle_buffer, device_id=device_id,
                hw_decoder_load=self.hw_decoder_load, normalize=self.normalize, checkpoint=self._checkpoint,
                window_outputs=self._window_finish is not None)
            # PARTIAL in training too: the iterator must consume DALI's whole (padded) epoch, including a
            # batch made only of padding when shard sizes differ, or the next epoch starts misaligned.
            policy = dict(reader_name=READER, last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
            if self._window_finish is None:
                self._outputs = [f"images{k}" for k in range(max(1, len(self.geometry.scales)))] + ["labels"]
                self._iterator = DALIGenericIterator([pipe], self._outputs, **policy)
            else:  # windows differ in size: they leave as a list of tensors (no copy), the rest dense
                self._outputs = ["windows"] + ["mirror"] * self.geometry.flip
                self._outputs += ["alpha"] * (self.normalize.pca_lighting > 0) + ["labels"]
                kinds = [DALIRaggedIterator.SPARSE_LIST_TAG]
                kinds += [DALIRaggedIterator.DENSE_TAG] * (len(self._outputs) - 1)
                self._iterator = DALIRaggedIterator([pipe], self._outputs, output_types=kinds, **policy)
        return self._iterator

    def _batches(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self._epoch(start_step)
        except RuntimeError as e:  # DALI's errors name the operator, not the dataset
            self._iterator = None  # a failed pipeline is unusable
            raise RuntimeError(f"{self.split.root} ({self.split.name} split): the DALI pipeline failed: {e}") from e

    def _epoch(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = self._ensure_iterator()  # builds and prefetches: errors in the first batches surface here
        step = start_step
        limit = self.steps_per_epoch if self.train else None
        for out in it:
            if limit is not None and step >= limit:
                continue  # drain the rest of DALI's epoch: it keeps DALI's epochs aligned with ours
            batch = out[0]
            if batch["labels"].shape[0] == 0:
                continue  # PARTIAL policy: a batch made only of padding comes back empty
            step += 1
            if self._window_finish is not None:
                alpha = batch.get("alpha")
                light = None if alpha is None else lighting_offsets(alpha)
                images = self._window_finish(batch["windows"], batch.get("mirror"), light)
            else:
                views = [batch[k] for k in self._outputs[:-1]]
                images = views if self.geometry.kind == "multiscale" else views[0]
            yield images, decode_labels(batch["labels"])
        it.reset()

    def _backend_state(self) -> dict | None:
        cpt = self._checkpoint if self._iterator is None else self._iterator.checkpoints()[0]
        if cpt is None:
            return None
        # DALI's checkpoint is a serialized protobuf: keep it as bytes (plain data for weights_only loads).
        return {"base_epoch": self._base_epoch, "checkpoint": cpt.encode("latin-1") if isinstance(cpt, str) else cpt}

    def _load_backend_state(self, state: dict | None) -> None:
        self.close()
        if state is None:
            self._checkpoint, self._base_epoch = None, self.epoch
            return
        self._checkpoint, self._base_epoch = state["checkpoint"], int(state["base_epoch"])

    def close(self) -> None:
        if self._window_finish is not None:
            self._window_finish.close()
        if self._iterator is not None:
            log.debug("releasing the DALI pipeline")
            self._iterator = None

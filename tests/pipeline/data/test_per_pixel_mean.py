"""data.normalize: the paper's per-pixel mean (the default of the paper configs) and the per-channel form.

data_prep writes ImageNet's 224x224 mean image (centre views of its statistics sample); both loaders and
both DALI finishes (torch beside DALI on the CPU, inside the pipeline on a GPU) subtract it alike.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.config.schema import DataConfig
from pipeline.data import build_loader
from pipeline.dist import DistInfo
from tests.support import REPO
from tests.support.loaders import make_dataset, needs_dali

ONE = DistInfo(rank=0, world_size=1)
STATS_MEAN, STATS_STD = np.array([120.0, 115.0, 100.0]), np.array([60.0, 58.0, 59.0])  # the fixtures' stats




def _gradient_mean_image(side: int) -> np.ndarray:
    """A mean image that varies over pixels and channels (a constant one cannot tell the two forms apart)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    return np.stack([60 + 100 * x / side, 90 + 80 * y / side, 130 - 50 * (x + y) / (2 * side)], -1).astype(np.float32)


def _with_mean_image(src: Path, dst: Path, image: np.ndarray | None) -> Path:
    """A copy of the dataset `src` whose manifest names `image` as its mean image (None: no mean image)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["stats"]["mean_image"] = None
    if image is not None:
        np.save(dst / "mean_image.npy", image)
        manifest["stats"]["mean_image"] = "mean_image.npy"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """JPEG photos of assorted sizes (ImageNet-like), with a non-constant 48x48 mean image."""
    base = make_dataset(tmp_path_factory.mktemp("photos") / "base", "imagenet", {"train": [4], "test": [5]})
    return _with_mean_image(base, base.parent / "with_mean", _gradient_mean_image(48))


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    """Lossless 32x32 images with a 24x24 mean image: the 24x24 centre view (resize_min 32) and the ten crops
    are cut without resampling, so every backend must give the same numbers, not nearly the same."""
    base = make_dataset(tmp_path_factory.mktemp("pngs") / "base", "cifar", {"train": [4], "test": [3, 2]})
    return _with_mean_image(base, base.parent / "with_mean", _gradient_mean_image(24))


def _cfg(root: Path, backend: str = "torch", **kw) -> DataConfig:
    base = dict(root=str(root), backend=backend, augmentation="paper", image_size=48, resize_min=56,
                resize_max=96, batch_size=4, eval_batch_per_gpu=8, num_threads=1, shuffle_buffer=4, pca_lighting=0.0)
    base.update(kw)
    return DataConfig(**base)


def _views(cfg: DataConfig, **kw) -> torch.Tensor:
    return torch.cat([x.cpu() for x, _ in build_loader(cfg, "test", ONE, device=torch.device("cpu"), **kw)])


def _centre_view(data: bytes, side: int = 224, shorter: int = 256) -> np.ndarray:
    """The test's own centre view: resize the whole image (shorter side `shorter`), then cut the centre."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = shorter / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.float64)


def test_data_prep_writes_the_mean_of_the_sampled_centre_views(tmp_path):
    """`python -m data_prep imagenet` writes mean_image.npy (224x224x3 float32), named by stats.mean_image:
    the mean of the centre views of exactly the train images sampled for the pixel statistics."""
    from data_prep.manifest import load_manifest
    from data_prep.synth import synth_imagenet
    from tests.support.prep import prep

    src, out = tmp_path / "src", tmp_path / "out"
    synth_imagenet(src, classes=3, per_class=4, val_per_class=1)
    assert prep("imagenet", "--src", src, "--out", out, "--stats-images", "5") == 0
    m = load_manifest(out)
    assert m.stats.mean_image == out / "mean_image.npy"
    image = np.load(m.stats.mean_image)
    assert image.shape == (224, 224, 3) and image.dtype == np.float32
    # Independently: the written train images whose key position is a multiple of ceil(found / 5).
    every = math.ceil(m.splits["train"].found / 5)
    views = []
    for shard in m.splits["train"].shards:
        with tarfile.open(shard.tar) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if ext == "jpg" and int(key.rsplit("_", 1)[1]) % every == 0:
                    views.append(_centre_view(tar.extractfile(member).read()))
    assert len(views) == m.stats.num_images >= 3
    expected = np.mean(views, 0)
    diff = np.abs(image - expected)
    # The same views up to the rounding of the resized size and crop offset to whole pixels.
    # (measured: mean 0.57, 99th percentile 3.8, max 11 on the 0-255 scale)
    assert float(diff.mean()) < 1.0 and float(np.percentile(diff, 99)) < 8.0, (float(diff.mean()), float(diff.max()))
    assert float(np.abs(image - image.mean((0, 1))).mean()) > 5.0  # a photo's mean image is not flat
    again = out.parent / "again"
    assert prep("imagenet", "--src", src, "--out", again, "--stats-images", "5") == 0
    assert np.array_equal(np.load(again / "mean_image.npy"), image)  # deterministic


def test_per_pixel_mean_and_per_channel_differ(photos):
    """per_pixel_mean: x - mean image (no std) for views of its size, x - its channel average otherwise;
    per_channel: (x - mean) / std. Both undo to the same pixels, and they differ."""
    mean_image = torch.from_numpy(np.load(photos / "mean_image.npy")).permute(2, 0, 1)
    pixel = _views(_cfg(photos, normalize="per_pixel_mean"))
    channel = _views(_cfg(photos, normalize="per_channel"))
    mean, std = torch.tensor(STATS_MEAN).float().view(3, 1, 1), torch.tensor(STATS_STD).float().view(3, 1, 1)
    assert pixel.shape == channel.shape == (5, 3, 48, 48)
    torch.testing.assert_close(pixel + mean_image, channel * std + mean, atol=2e-3, rtol=0)
    assert float((pixel - channel).abs().mean()) > 10.0
    # Whole images at other sizes (multiscale) subtract the mean image's per-channel average.
    average = mean_image.double().mean((1, 2)).float().view(3, 1, 1)
    for (p, _), (c, _) in zip(build_loader(_cfg(photos, normalize="per_pixel_mean"), "test", ONE, protocol="multiscale",
                                           scales=(40,), device=torch.device("cpu")),
                              build_loader(_cfg(photos, normalize="per_channel"), "test", ONE, protocol="multiscale",
                                           scales=(40,), device=torch.device("cpu"))):
        torch.testing.assert_close(p[0][0] + average, c[0][0] * std + mean, atol=2e-3, rtol=0)


def test_lighting_adds_to_the_per_pixel_form(photos):
    """Training crops: with lighting, x + light - mean image: one offset per sample and channel."""
    lit = torch.cat([x for x, _ in build_loader(_cfg(photos, pca_lighting=0.5), "train", ONE, seed=1)])
    plain = torch.cat([x for x, _ in build_loader(_cfg(photos, pca_lighting=0.0), "train", ONE, seed=1)])
    offset = (lit - plain).flatten(2)
    assert float(offset.std(dim=2).max()) < 1e-3 and float(offset.mean(dim=2).abs().max()) > 0.5


def test_a_dataset_without_its_mean_image_falls_back_with_a_warning(photos, tmp_path, caplog):
    """An older data_prep's ImageNet manifest: per_pixel_mean warns, naming the manifest, and normalises as
    per_channel did (so such runs stay as they were)."""
    old = _with_mean_image(photos, tmp_path / "old", None)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        fallback = _views(_cfg(old, normalize="per_pixel_mean"))
    assert str(old / "manifest.json") in caplog.text and "no mean image" in caplog.text
    assert torch.equal(fallback, _views(_cfg(old, normalize="per_channel")))


def test_cifar_is_unchanged_x_minus_its_exact_mean_image(pngs):
    """CIFAR (32x32 views, the 32x32 mean image): per_pixel_mean is x - mean image, no division, as before."""
    mean_image = np.full((32, 32, 3), 120.0, np.float32)  # the fixture's
    root = _with_mean_image(pngs, pngs.parent / "cifar_mean", mean_image)
    cfg = DataConfig(root=str(root), backend="torch", augmentation="cifar", image_size=32, eval_batch_per_gpu=8,
                     num_threads=1)
    pixel = _views(cfg)
    raw = _views(DataConfig(**{**cfg.__dict__, "normalize": "per_channel"})) * torch.tensor(STATS_STD).float().view(
        3, 1, 1) + torch.tensor(STATS_MEAN).float().view(3, 1, 1)
    torch.testing.assert_close(pixel + 120.0, raw, atol=2e-3, rtol=0)


@needs_dali
def test_backends_and_dali_finishes_give_the_same_normalised_views(pngs):
    """The same unresampled views through the torch backend, DALI with torch's CPU finish (window_finish)
    and DALI's in-pipeline normalisation (the GPU's graph, run on the CPU): equal to float rounding, for the
    centre view and the ten crops, with the mean image subtracted after each flip."""
    from pipeline.data.augment import Geometry, Normalize
    from pipeline.data.dali_loader import build_pipeline
    from pipeline.data.dataset import open_split

    cfg = dict(image_size=24, resize_min=32, resize_max=32, eval_batch_per_gpu=5)
    torch_views = _views(_cfg(pngs, "torch", **cfg))
    dali_cpu_finish = _views(_cfg(pngs, "dali", **cfg))
    mean_image = np.load(pngs / "mean_image.npy")
    pipe = build_pipeline(open_split(pngs, "test"), Geometry("center", 24, 32, 32), train=False, batch_size=5,
                          shard_id=0, num_shards=1, seed=0, num_threads=1, shuffle_buffer=1, device_id=None,
                          hw_decoder_load=0.0,
                          normalize=Normalize(tuple(mean_image.mean((0, 1)).tolist()), (1.0, 1.0, 1.0), 0.0,
                                              mean_image))
    out = pipe.run()[0]
    in_pipeline = torch.from_numpy(np.stack([np.array(out[i]) for i in range(len(out))]))
    assert torch_views.shape == dali_cpu_finish.shape == (5, 3, 24, 24)
    torch.testing.assert_close(dali_cpu_finish, torch_views, atol=1e-3, rtol=0)
    torch.testing.assert_close(in_pipeline, torch_views, atol=1e-3, rtol=0)
    raw = _views(_cfg(pngs, "torch", normalize="per_channel", **cfg)) * torch.tensor(STATS_STD).float().view(
        3, 1, 1) + torch.tensor(STATS_MEAN).float().view(3, 1, 1)
    torch.testing.assert_close(torch_views + torch.from_numpy(mean_image).permute(2, 0, 1), raw, atol=2e-3, rtol=0)
    ten = {b: _views(_cfg(pngs, b, **cfg), protocol="tencrop") for b in ("torch", "dali")}
    assert ten["torch"].shape == (5, 10, 3, 24, 24)
    torch.testing.assert_close(ten["dali"], ten["torch"], atol=1e-3, rtol=0)
    # The mirrored five are the flipped crops minus the (unflipped) mean image.
    m = torch.from_numpy(mean_image).permute(2, 0, 1)
    torch.testing.assert_close(ten["torch"][:, 5:] + m, (ten["torch"][:, :5] + m).flip(-1), atol=2e-3, rtol=0)


@needs_dali
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_dali_gpu_pipeline_matches_the_cpu_views(pngs):
    """On a GPU the mean image is subtracted inside DALI's pipeline: the same numbers as on the CPU."""
    cfg = dict(image_size=24, resize_min=32, resize_max=32, eval_batch_per_gpu=5)
    cpu = _views(_cfg(pngs, "torch", **cfg))
    gpu = torch.cat([x.cpu() for x, _ in build_loader(_cfg(pngs, "dali", **cfg), "test", ONE,
                                                      device=torch.device("cuda"))])
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=0)
    ten_gpu = torch.cat([x.cpu() for x, _ in build_loader(_cfg(pngs, "dali", **cfg), "test", ONE, protocol="tencrop",
                                                          device=torch.device("cuda"))])
    torch.testing.assert_close(ten_gpu, _views(_cfg(pngs, "torch", **cfg), protocol="tencrop"), atol=1e-3, rtol=0)


@pytest.mark.parametrize("config", ["configs/cifar10/resnet110.yaml", "configs/imagenet/resnet34.yaml",
                                    "configs/imagenet/resnet152.yaml", "configs/demo/digits.yaml"])
def test_paper_configs_default_to_the_per_pixel_mean(config):
    assert load_config(REPO / config).data.normalize == "per_pixel_mean"
    assert DataConfig().normalize == "per_pixel_mean"
    assert load_config(REPO / config, ["data.normalize=per_channel"]).data.normalize == "per_channel"
    with pytest.raises(Exception, match="normalize"):
        load_config(REPO / config, ["data.normalize=per_image"])

"""The paper's recipe, item by item (/work/shared/PAPER.md): cheap unit-level checks, no training.

Tables 2-4's paper numbers; AlexNet's PCA lighting (constants, the 0.1 default, on every backend); the horizontal
flip of ImageNet training; CIFAR's pad-4 / crop-32 / flip pixel by pixel; CIFAR's per-pixel (not per-channel)
mean; Table 4's scales {224, 256, 384, 480, 640}; CIFAR's mini-batch of 128; He initialisation's fan mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.config.schema import DataConfig, EvalConfig
from pipeline.data import build_loader
from pipeline.data.augment import (
    PCA_EIGVAL,
    PCA_EIGVEC,
    Finish,
    geometry_for,
    lighting,
    lighting_offsets,
    pad_crop_flip,
)
from pipeline.dist import DistInfo
from pipeline.models import build
from pipeline.models.registry import _shortcut_option, get_spec
from pipeline.tables.spec import load_table, planned_runs
from tests.support import REPO
from tests.support.loaders import BACKENDS, make_dataset, needs_dali, stored_images

ONE = DistInfo(rank=0, world_size=1)
CPU = torch.device("cpu")
FIXTURE_MEAN, FIXTURE_STD = (120.0, 115.0, 100.0), (60.0, 58.0, 59.0)  # make_dataset's manifest stats



# ---------------------------------------------------------------------------------------------------------------
# Tables 2, 3 and 4: the paper's numbers, copied from the paper (PAPER.md), not from the configs.

PAPER_TABLES = {
    "table2": ("tencrop", {"plain-18": {"top1_error": 27.94}, "plain-34": {"top1_error": 28.54},
                           "ResNet-18": {"top1_error": 27.88}, "ResNet-34": {"top1_error": 25.03}}),
    "table3": ("tencrop", {"plain-34": {"top1_error": 28.54, "top5_error": 10.02},
                           "ResNet-34 A": {"top1_error": 25.03, "top5_error": 7.76},
                           "ResNet-34 B": {"top1_error": 24.52, "top5_error": 7.46},
                           "ResNet-34 C": {"top1_error": 24.19, "top5_error": 7.40},
                           "ResNet-50": {"top1_error": 22.85, "top5_error": 6.71},
                           "ResNet-101": {"top1_error": 21.75, "top5_error": 6.05},
                           "ResNet-152": {"top1_error": 21.43, "top5_error": 5.71}}),
    "table4": ("multiscale", {"ResNet-34 B": {"top1_error": 21.84, "top5_error": 5.71},
                              "ResNet-34 C": {"top1_error": 21.53, "top5_error": 5.60},
                              "ResNet-50": {"top1_error": 20.74, "top5_error": 5.25},
                              "ResNet-101": {"top1_error": 19.87, "top5_error": 4.60},
                              "ResNet-152": {"top1_error": 19.38, "top5_error": 4.49}}),
}
# Which network and shortcut option each row's label means (the paper: A for ResNet-18/34 in Table 2, B for the
# bottleneck nets); plain nets have no shortcut.
ROW_MODELS = {"plain-18": ("plain18", None), "plain-34": ("plain34", None),
              "ResNet-18": ("resnet18", "A"), "ResNet-34": ("resnet34", "A"),
              "ResNet-34 A": ("resnet34", "A"), "ResNet-34 B": ("resnet34", "B"),
              "ResNet-34 C": ("resnet34", "C"), "ResNet-50": ("resnet50", "B"),
              "ResNet-101": ("resnet101", "B"), "ResNet-152": ("resnet152", "B")}


def _shortcut(model) -> object:
    """The option a model config resolves to, as the model registry resolves "default"."""
    return _shortcut_option(get_spec(model.name), model.shortcut)


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_tables_2_3_4_carry_the_papers_numbers_rows_and_protocol(name):
    protocol, paper = PAPER_TABLES[name]
    table = load_table(REPO / "configs" / "tables" / f"{name}.yaml")
    assert table.protocol == protocol
    assert [row.label for row in table.rows] == list(paper)  # the paper's rows, in its order, none missing
    for row in table.rows:
        assert row.paper == paper[row.label], row.label  # exact: these are copied numbers, not measurements
        assert set(row.paper) == set(table.metrics)
    for run in planned_runs(REPO / "configs" / "tables" / f"{name}.yaml"):
        model = run.cfg.model
        assert (model.name, _shortcut(model)) == ROW_MODELS[run.label], run.label
        assert model.bottleneck_stride == "1x1"  # the paper's bottleneck, not v1.5
        assert run.cfg.data.augmentation == "paper" and run.cfg.data.batch_size == 256


# ---------------------------------------------------------------------------------------------------------------
# PCA lighting: AlexNet's constants, V @ (alpha * eigval), alpha ~ N(0, 0.1), on every backend.

ALEXNET_EIGVAL = [0.2175, 0.0188, 0.0045]
ALEXNET_EIGVEC = [[-0.5675, 0.7192, 0.4009],
                  [-0.5808, -0.0045, -0.8140],
                  [-0.5836, -0.6948, 0.4203]]


def _alphas(rgb_offsets: np.ndarray) -> np.ndarray:
    """(N, 3) RGB offsets (0-255) -> the (N, 3) coefficients alpha that gave them: solve V @ (alpha * eigval * 255)."""
    v = np.asarray(ALEXNET_EIGVEC, dtype=np.float64)
    return np.linalg.solve(v, np.asarray(rgb_offsets, dtype=np.float64).T).T / (np.asarray(ALEXNET_EIGVAL) * 255.0)


def test_pca_lighting_constants_are_alexnets():
    np.testing.assert_array_equal(PCA_EIGVAL, np.float32(ALEXNET_EIGVAL))
    np.testing.assert_array_equal(PCA_EIGVEC, np.float32(ALEXNET_EIGVEC))
    # Eigenvectors are the columns: offset for alpha = e_j is column j times eigval_j (0-255 scale).
    for j in range(3):
        alpha = torch.zeros(1, 3)
        alpha[0, j] = 1.0
        expected = np.asarray(ALEXNET_EIGVEC)[:, j] * ALEXNET_EIGVAL[j] * 255.0
        np.testing.assert_allclose(lighting_offsets(alpha)[0].numpy(), expected, rtol=1e-5)
    alphas = _alphas(lighting(20000, 0.1, torch.Generator().manual_seed(0)).numpy())
    assert alphas.std(axis=0) == pytest.approx([0.1] * 3, rel=0.03) and abs(alphas.mean()) < 0.005


def test_pca_lighting_defaults_to_0_1_for_imagenet_training():
    assert DataConfig().pca_lighting == 0.1
    for path in sorted((REPO / "configs" / "imagenet").glob("[!_]*.yaml")):
        assert load_config(path).data.pca_lighting == 0.1, path.name


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("imagenet"), "imagenet", {"train": [9, 9], "test": [2]},
                        num_classes=3)


def _imagenet_cfg(root: Path, backend: str, **kw) -> DataConfig:
    # No pca_lighting here: the default is what is tested. per_channel: the fixture has no mean image.
    return DataConfig(**{"root": str(root), "backend": backend, "augmentation": "paper", "image_size": 48,
                         "resize_min": 56, "resize_max": 96, "batch_size": 6, "eval_batch_per_gpu": 2,
                         "num_threads": 1, "shuffle_buffer": 6, "normalize": "per_channel", **kw})


def _epochs(loader, n: int) -> torch.Tensor:
    return torch.cat([x.cpu() for _ in range(n) for x, _ in loader])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_lights_imagenet_training_with_alexnet_pca_at_0_1(imagenet, backend):
    lit_loader = build_loader(_imagenet_cfg(imagenet, backend), "train", ONE, device=CPU, seed=3)
    plain_loader = build_loader(_imagenet_cfg(imagenet, backend, pca_lighting=0.0), "train", ONE, device=CPU, seed=3)
    lit, plain = _epochs(lit_loader, 3), _epochs(plain_loader, 3)
    offsets = ((lit - plain).flatten(2) * torch.tensor(FIXTURE_STD).view(1, 3, 1))  # back to the 0-255 scale
    assert float(offsets.std(dim=2).max()) < 1e-2  # one RGB offset per image: lighting, nothing else changed
    alphas = _alphas(offsets.mean(dim=2).numpy())
    assert len(alphas) == 54
    assert 0.08 < float(alphas.std()) < 0.12 and abs(float(alphas.mean())) < 0.03, alphas.std(axis=0)
    # Evaluation views are never lit.
    ev = build_loader(_imagenet_cfg(imagenet, backend), "test", ONE, device=CPU)
    assert ev.finish.pca_lighting == 0.0
    if backend == "dali":
        assert lit_loader.normalize.pca_lighting == 0.1 and ev.normalize.pca_lighting == 0.0
    else:
        assert lit_loader.finish.pca_lighting == 0.1


@needs_dali
def test_dali_in_pipeline_lighting_uses_the_same_constants_and_std():
    """The GPU pipeline folds lighting into crop_mirror_normalize's mean (`_mean_with_lighting`); run that graph
    on the CPU and read the coefficients back."""
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.data.augment import Normalize
    from pipeline.data.dali_loader import _mean_with_lighting

    normalize = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), DataConfig().pca_lighting)

    @pipeline_def(batch_size=1024, num_threads=1, device_id=None, seed=5)
    def pipe():
        return _mean_with_lighting(fn, types, normalize)

    p = pipe()
    p.build()
    (means,) = p.run()
    light = -np.stack([np.asarray(means[i]) for i in range(len(means))])  # mean - light with mean 0
    alphas = _alphas(light)
    assert alphas.std(axis=0) == pytest.approx([0.1] * 3, rel=0.08)


# ---------------------------------------------------------------------------------------------------------------
# ImageNet training: "a 224x224 crop randomly sampled from an image or its horizontal flip".

def test_imagenet_training_geometries_flip_and_evaluation_does_not():
    assert geometry_for("paper", True, 224, 256, 480, 0.08).flip
    assert geometry_for("rrc", True, 224, 256, 480, 0.08).flip
    assert not geometry_for("paper", False, 224, 256, 480, 0.08).flip


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pngs"), "cifar", {"train": [8], "test": [3]}, num_classes=2)


def _stored_images(root: Path, split: str) -> list:
    """The split's stored PNGs as float CHW tensors, in shard order."""
    return [torch.from_numpy(np.array(image)).permute(2, 0, 1).float() for image in stored_images(root, split, "png")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_imagenet_training_flips_half_the_images_on_every_backend(pngs, backend):
    # The paper's geometry with S in [32, 33) on 32x32 lossless images: the window is (almost) the whole image,
    # so every view is a stored image or its mirror image, up to a sub-pixel resampling.
    cfg = DataConfig(root=str(pngs), backend=backend, augmentation="paper", image_size=32, resize_min=32,
                     resize_max=33, batch_size=4, num_threads=1, shuffle_buffer=4, pca_lighting=0.0,
                     normalize="per_channel")
    views = _epochs(build_loader(cfg, "train", ONE, device=CPU, seed=1), 8)
    pixels = views * torch.tensor(FIXTURE_STD).view(1, 3, 1, 1) + torch.tensor(FIXTURE_MEAN).view(1, 3, 1, 1)
    stored = _stored_images(pngs, "train")
    assert len(pixels) == 8 * len(stored)
    flips = []
    for view in pixels:
        # Its image: the nearest stored one in either orientation.
        k = min(range(len(stored)), key=lambda i: min(float((view - stored[i]).abs().mean()),
                                                      float((view - stored[i].flip(2)).abs().mean())))
        straight, mirrored = float((view - stored[k]).abs().mean()), float((view - stored[k].flip(2)).abs().mean())
        if float((stored[k] - stored[k].flip(2)).abs().mean()) < 30:
            continue  # a crop too nearly symmetric to tell its flip from a resampling
        assert min(straight, mirrored) < 0.5 * max(straight, mirrored), (straight, mirrored)
        flips.append(mirrored < straight)
    assert len(flips) >= 12
    assert 0.2 <= sum(flips) / len(flips) <= 0.8, flips  # both happen, about half the time


# ---------------------------------------------------------------------------------------------------------------
# CIFAR: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded image or its
# horizontal flip", and "the per-pixel mean subtracted".

def test_cifar_pad_4_crop_32_flip_pixel_by_pixel():
    n, pad = 3000, 4
    # Every pixel of every sample holds a distinct positive number that says where it came from; 0 is padding.
    ch, y, x = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    code = (1 + ch * 1024 + y * 32 + x).float()
    images = code.unsqueeze(0) + 4096 * torch.arange(n).view(n, 1, 1, 1).float()
    out = pad_crop_flip(images, pad, torch.Generator().manual_seed(0))
    assert out.shape == (n, 3, 32, 32)
    seen = set()
    for i in range(n):
        # The centre pixel always comes from the image (a shift is at most 4): it gives the offset; its
        # right-hand neighbour gives the direction.
        centre = int(out[i, 0, 16, 16]) - 4096 * i - 1
        flip = int(out[i, 0, 16, 17]) < int(out[i, 0, 16, 16])
        sy, sx = centre // 32, centre % 32
        dy = sy - 16 + pad
        dx = (sx - (31 - 16) + pad) if flip else (sx - 16 + pad)
        assert 0 <= dy <= 2 * pad and 0 <= dx <= 2 * pad, (i, dy, dx)
        padded = torch.zeros(3, 32 + 2 * pad, 32 + 2 * pad)
        padded[:, pad:pad + 32, pad:pad + 32] = images[i]
        expected = padded[:, dy:dy + 32, dx:dx + 32]
        if flip:
            expected = expected.flip(2)
        assert torch.equal(out[i], expected), i  # every pixel, every channel: the image's or the zero padding
        seen.add((dy, dx, flip))
    assert len(seen) == 9 * 9 * 2  # every offset from 0 to 8 on both axes, flipped and not


def test_cifar_crop_offsets_and_flips_are_uniform():
    n = 20000
    ch, y, x = torch.meshgrid(torch.arange(1), torch.arange(32), torch.arange(32), indexing="ij")
    images = (1 + y * 32 + x).float().expand(n, 3, 32, 32)
    out = pad_crop_flip(images, 4, torch.Generator().manual_seed(1))
    flip = out[:, 0, 16, 17] < out[:, 0, 16, 16]
    centre = out[:, 0, 16, 16].long() - 1
    dy = centre // 32 - 12
    assert torch.bincount(dy, minlength=9).tolist() == pytest.approx([n / 9] * 9, rel=0.1)
    assert float(flip.float().mean()) == pytest.approx(0.5, abs=0.015)


def _gradient_mean_image() -> np.ndarray:
    """A 32x32 mean image that differs over pixels and channels: per-pixel and per-channel subtraction differ."""
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    return np.stack([60 + 100 * x / 32, 90 + 80 * y / 32, 130 - 50 * (x + y) / 64], -1).astype(np.float32)


def test_finish_subtracts_the_mean_image_pixel_by_pixel():
    mean_image = torch.from_numpy(_gradient_mean_image()).permute(2, 0, 1).contiguous()
    finish = Finish(mean=mean_image.mean((1, 2)), std=torch.ones(3), mean_image=mean_image)
    raw = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    out = finish(raw, seed=None)
    expected = raw.permute(0, 3, 1, 2).float() - mean_image
    assert torch.equal(out, expected)
    per_channel = raw.permute(0, 3, 1, 2).float() - mean_image.mean((1, 2)).view(1, 3, 1, 1)
    assert float((out - per_channel).abs().max()) > 10  # the fixture tells the two apart


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("cifar"), "cifar", {"train": [8], "test": [3]}, num_classes=2)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stats"]["mean_image"] == "mean_image.npy"
    np.save(root / "mean_image.npy", _gradient_mean_image())  # replace the fixture's constant mean image
    return root


@pytest.mark.parametrize("backend", BACKENDS)
def test_cifar_loaders_subtract_the_per_pixel_mean(cifar, backend):
    cfg = load_config(REPO / "configs" / "cifar10" / "resnet20.yaml",
                      [f"data.root={cifar}", f"data.backend={backend}", "data.batch_size=4",
                       "data.eval_batch_per_gpu=3", "data.num_threads=1", "data.shuffle_buffer=4"]).data
    assert cfg.normalize == "per_pixel_mean" and cfg.pca_lighting == 0.1  # 0.1 is ignored by CIFAR's augmentation
    views = torch.cat([x.cpu() for x, _ in build_loader(cfg, "test", ONE, device=CPU)])
    stored = torch.stack(_stored_images(cifar, "test"))
    mean_image = torch.from_numpy(_gradient_mean_image()).permute(2, 0, 1)
    torch.testing.assert_close(views, stored - mean_image, rtol=0, atol=1e-4)
    train = build_loader(cfg, "train", ONE, device=CPU)
    assert train.finish.cifar_pad == 4 and train.finish.pca_lighting == 0.0  # no lighting noise on CIFAR


# ---------------------------------------------------------------------------------------------------------------
# Table 4's scales, CIFAR's mini-batch.

PAPER_SCALES = [224, 256, 384, 480, 640]


def test_default_multiscale_sides_are_the_papers():
    assert EvalConfig().scales == PAPER_SCALES
    for run in planned_runs(REPO / "configs" / "tables" / "table4.yaml"):
        assert list(run.cfg.eval.scales) == PAPER_SCALES, run.label
    g = geometry_for("paper", False, 224, 256, 480, 0.08, "multiscale", EvalConfig().scales)
    assert g.scales == tuple(PAPER_SCALES)


def test_default_multiscale_loader_gives_every_paper_scale(imagenet):
    loader = build_loader(_imagenet_cfg(imagenet, "torch", eval_batch_per_gpu=1), "test", ONE, device=CPU,
                          protocol="multiscale")
    views, _ = next(iter(loader))
    assert [min(v.shape[-2:]) for v in views] == PAPER_SCALES


def test_cifar_mini_batch_is_128_in_every_config():
    assert DataConfig().batch_size == 128
    paths = sorted((REPO / "configs" / "cifar10").glob("[!_]*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        data = load_config(path).data
        assert (data.batch_size, data.augmentation, data.pad, data.image_size) == (128, "cifar", 4, 32), path.name
    for table in ("table6", "fig6", "fig7"):
        for run in planned_runs(REPO / "configs" / "tables" / f"{table}.yaml"):
            assert run.cfg.data.batch_size == 128, (table, run.label)


# ---------------------------------------------------------------------------------------------------------------
# He et al. initialisation. The code claims (pipeline/models/resnet.py `he_init`) Kaiming normal with
# mode="fan_out": std = sqrt(2 / (k * k * out_channels)). He et al. 2015 allow fan-in or fan-out; check the claim
# on every conv, in layers where the two differ, so a switch to fan_in would fail here.

@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_plain20", "resnet34", "resnet50"])
def test_he_init_is_kaiming_normal_fan_out_on_every_conv(name):
    torch.manual_seed(0)
    net = build(name)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    told_apart = 0
    for conv in convs:
        out_ch, in_ch, kh, kw = conv.weight.shape
        fan_out, fan_in = kh * kw * out_ch, kh * kw * in_ch
        std = float(conv.weight.detach().std())
        assert std == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), (conv, std)
        assert abs(float(conv.weight.detach().mean())) < 0.2 * std
        if max(fan_in, fan_out) / min(fan_in, fan_out) >= 1.5:
            assert std != pytest.approx((2 / fan_in) ** 0.5, rel=0.15)
            told_apart += 1
    assert told_apart >= 1
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((b.weight == 1).all()) and bool((b.bias == 0).all()) for b in bns)

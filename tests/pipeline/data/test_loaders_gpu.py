"""The DALI GPU path: "mixed" decode (nvJPEG and the hardware JPEG decoder), resize and normalisation on the GPU.

Skipped without a CUDA device and DALI (CI has neither GPU nor a way to fake one: nothing here is mocked).
`test_data_loaders.py` runs the same pipeline definition on the CPU (`device_id=None`); on a GPU machine it
also runs on the GPU, as `build_loader` delivers to the rank's GPU by default. These tests add what only
a GPU run can show: batches land on the GPU, the GPU decode agrees with the CPU one, and resume stays exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config.schema import DataConfig
from pipeline.data import build_loader
from pipeline.dist import DistInfo
from tests.pipeline.data.test_loaders import HAS_DALI
from tests.support.loaders import make_dataset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (HAS_DALI and torch.cuda.is_available()), reason="needs a CUDA GPU and DALI")]

GPU, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    # ImageNet-sized JPEGs, so the decoder's hardware / hybrid paths are the ones ImageNet takes.
    return make_dataset(tmp_path_factory.mktemp("imagenet-gpu"), "imagenet",
                        {"train": [20, 17, 11], "test": [9, 8]}, num_classes=48, sizes=(300, 500))


def cfg(root: Path, **kw) -> DataConfig:
    base = dict(root=str(root), backend="dali", augmentation="paper", image_size=224, batch_size=8,
                eval_batch_per_gpu=8, num_threads=2, shuffle_buffer=16)
    base.update(kw)
    return DataConfig(**base)


def test_batches_arrive_on_the_gpu_normalised(imagenet):
    loader = build_loader(cfg(imagenet, pca_lighting=0.0), "train", DistInfo(), device=GPU)
    batches = list(loader)
    assert len(batches) == len(loader) == 48 // 8
    mean = torch.tensor([120.0, 115.0, 100.0], device=GPU).view(1, 3, 1, 1)
    std = torch.tensor([60.0, 58.0, 59.0], device=GPU).view(1, 3, 1, 1)
    for x, y in batches:
        assert x.device.type == "cuda" and x.shape == (8, 3, 224, 224) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 48
        pixels = x * std + mean
        assert float(pixels.min()) > -0.5 and float(pixels.max()) < 255.5
    labels = sorted(int(v) for _, y in batches for v in y)
    assert len(set(labels)) == len(labels)  # one epoch: no sample twice


def test_gpu_decode_agrees_with_the_cpu_decode(imagenet):
    """The centre view through nvJPEG / the hardware decoder and GPU resize vs libjpeg-turbo and CPU resize."""
    views = {}
    for device in (GPU, CPU):
        batches = list(build_loader(cfg(imagenet), "test", DistInfo(), device=device))
        views[device.type] = (torch.cat([x.cpu() for x, _ in batches]), torch.cat([y.cpu() for _, y in batches]))
    (xg, yg), (xc, yc) = views["cuda"], views["cpu"]
    assert torch.equal(yg, yc) and xg.shape == xc.shape == (17, 3, 224, 224)
    diff = (xg - xc).abs() * 60.0  # back to the 0-255 scale (std ~60)
    # IDCT rounding and resampling differ by a grey level or two; a wrong window or channel order by tens.
    assert float(diff.mean()) < 2.0, float(diff.mean())


@pytest.mark.parametrize("consumed", [0, 3])
def test_resume_on_the_gpu_gives_the_identical_stream(imagenet, consumed):
    config = cfg(imagenet)
    reference = build_loader(config, "train", DistInfo(), device=GPU, seed=3)
    it = iter(reference)
    for _ in range(consumed):
        next(it)
    state = reference.state_dict()
    rest = [(x.clone(), y.clone()) for x, y in it]
    resumed = build_loader(config, "train", DistInfo(), state, device=GPU, seed=3)
    again = list(resumed)
    assert len(again) == len(rest) == len(reference) - consumed
    for (xa, ya), (xb, yb) in zip(rest, again):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_torch_backend_delivers_finished_batches_on_the_gpu(imagenet):
    x, y = next(iter(build_loader(cfg(imagenet, backend="torch"), "train", DistInfo(), device=GPU)))
    assert x.device.type == "cuda" and x.shape == (8, 3, 224, 224) and y.dtype == torch.int64

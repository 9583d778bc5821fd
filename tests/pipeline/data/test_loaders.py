"""The loaders on CPU, both real backends: shapes, ranges, distributed exactness, resume, errors."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from launch.submit.local import torchrun_command
from pipeline.config.schema import DataConfig
from pipeline.data import DatasetError, build_loader, dataset_num_classes
from pipeline.dist import DistInfo
from tests.support import REPO
from tests.support.loaders import BACKENDS, HAS_DALI, make_dataset
from tests.support.training import env

TRAIN_SHARDS = [7, 6, 5]  # 18 samples: shard counts that split unevenly over 2 or 4 ranks
TEST_SHARDS = [5, 4]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    # One class per sample: a label names its sample, so coverage can be checked from labels alone.
    return make_dataset(tmp_path_factory.mktemp("imagenet"), "imagenet",
                        {"train": TRAIN_SHARDS, "test": TEST_SHARDS}, num_classes=27)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cifar"), "cifar", {"train": [6, 5], "test": [3, 4]},
                        num_classes=18)


def imagenet_cfg(root: Path, backend: str, **kw) -> DataConfig:
    base = dict(root=str(root), backend=backend, augmentation="paper", image_size=48, resize_min=56,
                resize_max=96, batch_size=4, eval_batch_per_gpu=4, num_threads=1, shuffle_buffer=6)
    base.update(kw)
    return DataConfig(**base)


def cifar_cfg(root: Path, backend: str, **kw) -> DataConfig:
    base = dict(root=str(root), backend=backend, augmentation="cifar", image_size=32, batch_size=4,
                eval_batch_per_gpu=4, num_threads=1, shuffle_buffer=4)
    base.update(kw)
    return DataConfig(**base)


def rank(r: int, world: int) -> DistInfo:
    return DistInfo(rank=r, world_size=world)


def epoch_labels(loader) -> list:
    return [int(v) for _, y in loader for v in y]


@pytest.mark.parametrize("backend", BACKENDS)
def test_imagenet_train_batches(imagenet, backend):
    cfg = imagenet_cfg(imagenet, backend, pca_lighting=0.0)
    loader = build_loader(cfg, "train", rank(0, 1))
    assert len(loader) == 18 // 4
    batches = list(loader)
    assert len(batches) == len(loader)
    mean, std = torch.tensor([120.0, 115.0, 100.0]).view(1, 3, 1, 1), torch.tensor([60.0, 58.0, 59.0]).view(1, 3, 1, 1)
    for x, y in batches:
        x = x.cpu()
        assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 18
        pixels = x * std + mean  # back to 0-255: mean/std per channel were applied, nothing else
        assert float(pixels.min()) > -0.5 and float(pixels.max()) < 255.5
    bf16 = build_loader(imagenet_cfg(imagenet, backend, output_dtype="bfloat16"), "train", rank(0, 1))
    assert next(iter(bf16))[0].dtype == torch.bfloat16
    assert dataset_num_classes(cfg) == 27


@pytest.mark.parametrize("backend", BACKENDS)
def test_cifar_train_and_original_eval_view(cifar, backend):
    from PIL import Image

    cfg = cifar_cfg(cifar, backend)
    x, y = next(iter(build_loader(cfg, "train", rank(0, 1))))
    x = x.cpu()
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    pixels = x + 120.0  # the per-pixel mean image of the fixture; padding is 0 after the subtraction
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 255
    # Evaluation: exactly the stored 32x32 image minus the mean image.
    ev = build_loader(cfg, "test", rank(0, 1))
    images = torch.cat([b[0].cpu() for b in ev])
    assert images.shape == (7, 3, 32, 32)
    tar_first = _first_member(cifar / "test-000000.tar", ".png")
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(tar_first)).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(images[0] + 120.0, expected.float())


def test_crop_windows_within_configured_ranges():
    from pipeline.data.augment import Geometry, center_window, paper_window, rrc_window

    rng = np.random.default_rng(0)
    g = Geometry("paper", 224, 256, 480, flip=True)
    for _ in range(500):
        h, w = int(rng.integers(200, 900)), int(rng.integers(200, 900))
        x0, y0, cw, ch = paper_window(h, w, rng, g)
        assert cw == ch and x0 >= 0 and y0 >= 0 and x0 + cw <= w + 1e-6 and y0 + ch <= h + 1e-6
        scale = 224 / cw  # the shorter side after resizing is min(h, w) * scale
        if cw < min(h, w):
            assert 256 - 1e-6 <= min(h, w) * scale <= 480 + 1e-6
        x0, y0, cw, ch = rrc_window(h, w, rng, Geometry("rrc", 224, rrc_min_scale=0.08))
        assert x0 >= 0 and y0 >= 0 and x0 + cw <= w + 1e-6 and y0 + ch <= h + 1e-6
        assert 0.08 * h * w * 0.999 <= cw * ch <= h * w * 1.001
        assert 3 / 4 - 1e-6 <= cw / ch <= 4 / 3 + 1e-6 or cw == ch == min(h, w)
    x0, y0, cw, ch = center_window(300, 400, Geometry("center", 224, 256))
    assert cw == ch == pytest.approx(300 * 224 / 256) and x0 == pytest.approx((400 - cw) / 2)


@pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")
def test_backends_agree_on_the_centre_view(imagenet):
    """DALI's window arithmetic and PIL's mean the same crop: evaluation views nearly coincide."""
    views = {b: torch.cat([x for x, _ in build_loader(imagenet_cfg(imagenet, b), "test", rank(0, 1))])
             for b in ("dali", "torch")}
    diff = (views["dali"] - views["torch"]).abs().mul(60).mean()  # ~0-255 scale
    assert float(diff) < 6.0


def dali_test_views(root: Path, kind: str, seed: int = 0, **kw) -> np.ndarray:
    """The 9 test images through `build_pipeline` alone (DALI's own resize and normalisation, on the CPU)."""
    from pipeline.data.augment import Geometry, Normalize
    from pipeline.data.dali_loader import build_pipeline
    from pipeline.data.dataset import open_split

    pipe = build_pipeline(open_split(root, "test"), Geometry(kind, 48, 56, 96, flip=kind == "rrc"), train=False,
                          batch_size=9, shard_id=0, num_shards=1, seed=seed, num_threads=1, shuffle_buffer=1,
                          device_id=None, hw_decoder_load=0.0,
                          normalize=Normalize((120.0, 115.0, 100.0), (60.0, 58.0, 59.0), 0.0), **kw)
    images, _ = pipe.run()
    return np.stack([np.array(images[i]) for i in range(len(images))])


@pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")
def test_window_cropped_in_the_resize_matches_the_window_decode(imagenet):
    """The GPU's geometry (whole image decoded, window cropped inside the resize), run here on the CPU,
    gives the views of the window decode: the same window, up to its rounding to whole pixels."""
    outputs = {(crop_in_resize, kind): dali_test_views(imagenet, kind, seed=4, crop_in_resize=crop_in_resize)
               for crop_in_resize in (False, True) for kind in ("center", "rrc")}
    assert outputs[True, "rrc"].shape == outputs[False, "rrc"].shape == (9, 3, 48, 48)
    diff = np.abs(outputs[True, "center"] - outputs[False, "center"]) * 60.0  # back to ~0-255
    assert outputs[True, "center"].shape == (9, 3, 48, 48) and float(diff.mean()) < 3.0, float(diff.mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_rrc_train_batches(imagenet, backend):
    x, y = next(iter(build_loader(imagenet_cfg(imagenet, backend, augmentation="rrc"), "train", rank(0, 1))))
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")
def test_tencrop_and_multiscale_views(imagenet):
    views = {}
    for backend in ("dali", "torch"):
        cfg = imagenet_cfg(imagenet, backend)
        ten = list(build_loader(cfg, "test", rank(0, 1), protocol="tencrop"))
        x = torch.cat([b[0] for b in ten])
        assert x.shape == (9, 10, 3, 48, 48) and torch.cat([b[1] for b in ten]).tolist() == list(range(18, 27))
        assert torch.allclose(x[:, 5:], x[:, :5].flip(-1))  # the second five are the first five mirrored
        multi = list(build_loader(cfg, "test", rank(0, 1), protocol="multiscale", scales=(40, 64)))
        assert len(multi) == 9 and all(len(b[0]) == 2 and b[1].shape == (1,) for b in multi)
        sizes = [[tuple(v.shape) for v in b[0]] for b in multi]
        assert all(min(s[0][2:]) == 40 and min(s[1][2:]) == 64 and s[0][1] == 3 for s in sizes)
        views[backend] = (x, sizes)
    assert float((views["dali"][0] - views["torch"][0]).abs().mul(60).mean()) < 8.0
    for a, b in zip(views["dali"][1], views["torch"][1]):  # the same sizes, within rounding
        assert all(abs(p - q) <= 1 for sa, sb in zip(a, b) for p, q in zip(sa, sb))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_disjoint_equal_steps_and_reshuffled(imagenet, backend, world):
    cfg = imagenet_cfg(imagenet, backend, batch_size=2 * world)
    loaders = [build_loader(cfg, "train", rank(r, world), seed=3) for r in range(world)]
    steps = 18 // (2 * world)
    orders = []
    for _epoch in range(2):
        per_rank = [epoch_labels(loader) for loader in loaders]
        assert [len(p) for p in per_rank] == [steps * 2] * world  # equal steps, uneven shards
        union = [v for p in per_rank for v in p]
        assert len(set(union)) == len(union) == steps * 2 * world  # disjoint; the epoch minus its remainder
        orders.append(per_rank)
    assert orders[0] != orders[1]  # each epoch reshuffles
    again = [epoch_labels(build_loader(cfg, "train", rank(r, world), seed=3)) for r in range(world)]
    assert again == orders[0]  # the seed makes it reproducible


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 4])
def test_evaluation_counts_every_sample_once(imagenet, backend, world):
    cfg = imagenet_cfg(imagenet, backend, eval_batch_per_gpu=2 * world)
    labels = []
    for r in range(world):
        loader = build_loader(cfg, "test", rank(r, world))
        got = epoch_labels(loader)
        assert len(got) > 0 and len(list(loader)) == len(loader)  # also: a second pass is complete
        labels += got
    assert sorted(labels) == list(range(18, 27))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("consumed", [0, 2, 4])  # at an epoch's start, mid-epoch, after its last step
def test_resume_mid_epoch_gives_the_identical_stream(imagenet, tmp_path, backend, consumed):
    cfg = imagenet_cfg(imagenet, backend, batch_size=4, num_threads=2)  # 2: thread/worker-order independent
    info = rank(1, 2)
    reference = build_loader(cfg, "train", info, seed=5)
    list(reference)  # epoch 0
    it = iter(reference)
    head = [next(it) for _ in range(consumed)]
    state = reference.state_dict()
    torch.save(state, tmp_path / "loader.pt")
    rest = list(it) + list(reference)  # the rest of epoch 1, then epoch 2
    restored_state = torch.load(tmp_path / "loader.pt", weights_only=True)
    resumed = build_loader(cfg, "train", info, restored_state, seed=5)
    again = list(resumed) + list(resumed)
    assert len(head) + len(rest) == 2 * len(reference) and len(again) == len(rest)
    for (xa, ya), (xb, yb) in zip(rest, again):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert resumed.state_dict()["epoch"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_cifar_resume_repeats_the_pad_crop_flip(cifar, backend):
    cfg = cifar_cfg(cifar, backend, batch_size=2)
    reference = build_loader(cfg, "train", rank(0, 1), seed=1)
    it = iter(reference)
    next(it)
    state = reference.state_dict()
    rest = list(it)
    again = list(build_loader(cfg, "train", rank(0, 1), state, seed=1))
    assert len(rest) == len(again) == len(reference) - 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, again))


@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_world_size_restarts_the_epoch(imagenet, backend, caplog):
    cfg = imagenet_cfg(imagenet, backend, batch_size=4)
    two = build_loader(cfg, "train", rank(0, 2))
    next(iter(two))
    state = two.state_dict()
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        one = build_loader(cfg, "train", rank(0, 1), state)
    assert "world size 2" in caplog.text and "restarting epoch 0" in caplog.text
    assert one.state_dict()["step"] == 0 and len(list(one)) == len(one)


def test_synthetic_backend(tmp_path):
    cfg = DataConfig(root=str(tmp_path / "none"), backend="synthetic", image_size=32, batch_size=8)
    loader = build_loader(cfg, "train", rank(0, 2))
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64 and len(loader) == 50_000 // 8


def test_a_rank_that_does_not_validate_reads_the_same_at_start_for_16_or_1024_shards(tmp_path):
    """Training's start on 2 ranks (torch backend): the primary validates every shard's index and builds the sample
    table for all; the other rank's files opened and bytes read under the dataset do not grow with the shards."""
    few, many = tmp_path / "few", tmp_path / "many"  # the same 2,048 training samples in 16 or 1,024 shards
    make_dataset(few, "cifar", {"train": [128] * 16, "test": [8]}, num_classes=4)
    make_dataset(many, "cifar", {"train": [2] * 1024, "test": [8]}, num_classes=4)
    out = tmp_path / "reads"
    out.mkdir()
    proc = subprocess.run(torchrun_command("tests.workers.startup_reads", [str(out), str(few), str(many)], 2),
                          capture_output=True, text=True, cwd=REPO, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    primary, other = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert other[str(many)] == other[str(few)], other  # neither the manifest nor any index: nothing per shard
    assert primary[str(many)]["files"] > 1024 > primary[str(few)]["files"]  # the validating rank reads them all


def test_label_bytes_decode():
    from pipeline.data.dali_loader import decode_labels

    raw = torch.tensor([[55, 0, 0], [49, 50, 10], [57, 57, 57]], dtype=torch.uint8)
    assert decode_labels(raw).tolist() == [7, 12, 999]


@pytest.mark.parametrize("damage", ["missing", "truncated", "index", "version"])
def test_broken_datasets_name_the_file(imagenet, tmp_path, damage):
    root = tmp_path / "ds"
    shutil.copytree(imagenet, root)
    if damage == "missing":
        (root / "train-000001.tar").unlink()
        culprit = "train-000001.tar"
    elif damage == "truncated":
        data = (root / "train-000002.tar").read_bytes()
        (root / "train-000002.tar").write_bytes(data[: len(data) // 2])
        culprit = "train-000002.tar"
    elif damage == "index":
        shutil.copy(root / "train-000002.idx", root / "train-000000.idx")
        culprit = "train-000000.idx"
    else:
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["version"] = 99
        (root / "manifest.json").write_text(json.dumps(manifest))
        culprit = "manifest.json"
    with pytest.raises(DatasetError, match=culprit):
        build_loader(imagenet_cfg(root, "torch"), "train", rank(0, 1))


def _first_member(tar_path: Path, suffix: str) -> bytes:
    import tarfile

    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return tar.extractfile(member).read()


def test_index_reads_match_the_webdataset_library(imagenet):
    """The torch backend reads members by the DALI index; the `webdataset` library must see the same bytes."""
    import webdataset as wds

    from pipeline.data.dataset import open_split

    split = open_split(imagenet, "train")
    refs = split.sample_refs()
    ours = []
    for ref in refs:
        with open(split.shards[ref.shard].tar, "rb") as f:
            f.seek(ref.image[0])
            image = f.read(ref.image[1])
            f.seek(ref.label[0])
            ours.append((image, int(f.read(ref.label[1]))))
    theirs = [(s["jpg"], int(s["cls"])) for s in wds.WebDataset([str(s.tar) for s in split.shards], shardshuffle=False)]
    assert ours == theirs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_corrupt_image_names_its_dataset(imagenet, tmp_path, backend):
    from pipeline.data.dataset import read_index

    root = tmp_path / "ds"
    shutil.copytree(imagenet, root)
    offset, size, _ = read_index(root / "test-000000.idx")[0]["jpg"]
    with open(root / "test-000000.tar", "r+b") as f:  # same length, so the cheap checks pass
        f.seek(offset)
        f.write(b"\0" * size)
    manifest = json.loads((root / "manifest.json").read_text())
    with pytest.raises(RuntimeError, match="test-000000.tar" if backend == "torch" else str(root)):
        list(build_loader(imagenet_cfg(root, backend), "test", rank(0, 1)))
    assert manifest["splits"]["test"]["shards"][0]["tar"] == "test-000000.tar"


def _data_prep_synth_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("data_prep.manifest") is not None


@pytest.mark.skipif(not _data_prep_synth_available(), reason="data_prep (synth + manifest) not in the tree yet")
@pytest.mark.parametrize("kind", ["imagenet", "cifar10"])
def test_loaders_read_data_prep_synth_output(tmp_path, kind):
    """The contract end to end: `python -m data_prep synth` output, read by both backends, every sample once."""
    import subprocess
    import sys

    from data_prep.manifest import load_manifest

    size = ["--classes", "3", "--per-class", "4"] if kind == "imagenet" else ["--per-class", "10"]
    src, out = tmp_path / "src", tmp_path / "out"
    for command in (["synth", "--kind", kind, "--out", str(src), *size], [kind, "--src", str(src), "--out", str(out)]):
        subprocess.run([sys.executable, "-m", "data_prep", *command], check=True, capture_output=True)
    tmp_path = out
    load_manifest(tmp_path)  # their validation accepts it...
    manifest = json.loads((tmp_path / "manifest.json").read_text())  # ...and ours reads the same file
    for backend in BACKENDS:
        backend = getattr(backend, "values", [backend])[0]
        if backend == "dali" and not HAS_DALI:
            continue
        make = imagenet_cfg if kind == "imagenet" else cifar_cfg
        cfg = make(tmp_path, backend, batch_size=2, eval_batch_per_gpu=2)
        for split in manifest["splits"]:
            loader = build_loader(cfg, split, rank(0, 1), train=False)
            assert sum(len(y) for _, y in loader) == manifest["splits"][split]["num_samples"]


@pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")
def test_cpu_window_finish_means_the_gpu_pipelines_finish(imagenet):
    """On the CPU torch resizes and normalises DALI's decoded windows (window_finish); on a GPU DALI does it
    in the pipeline. The same centre views, through both, differ by resampling rounding only."""
    cfg = imagenet_cfg(imagenet, "dali")
    cpu_path = torch.cat([x for x, _ in build_loader(cfg, "test", rank(0, 1), device=torch.device("cpu"))])
    in_pipeline = torch.from_numpy(dali_test_views(imagenet, "center"))
    assert cpu_path.shape == in_pipeline.shape == (9, 3, 48, 48)
    diff = (cpu_path - in_pipeline).abs() * 60.0  # ~0-255 scale
    assert float(diff.mean()) < 2.0 and float(diff.max()) < 60.0, (float(diff.mean()), float(diff.max()))


@pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")
def test_cpu_window_finish_flips_and_lights(imagenet):
    """The flip and lighting draws come from DALI and are applied by window_finish: with lighting on, images
    differ from the same loader's with lighting off by one offset per sample and channel."""
    common = dict(num_threads=2)
    lit = torch.cat([x for x, _ in build_loader(imagenet_cfg(imagenet, "dali", pca_lighting=0.5, **common),
                                                "train", rank(0, 1), device=torch.device("cpu"), seed=2)])
    plain = torch.cat([x for x, _ in build_loader(imagenet_cfg(imagenet, "dali", pca_lighting=0.0, **common),
                                                  "train", rank(0, 1), device=torch.device("cpu"), seed=2)])
    offset = (lit - plain).flatten(2)  # (N, 3, H*W)
    assert float(offset.std(dim=2).max()) < 1e-4  # constant over each image's channel
    assert float(offset.mean(dim=2).abs().max()) > 0.01  # and not zero


# A rank reading with the torch backend's 2 workers: the job's SIGTERM (sent by another process, as slurmstepd does)
# leaves them working; the rank's own end of them (multiprocessing's at exit) still ends them, without a hang or an
# error.
_WORKERS_UNDER_SIGTERM = """
import os, subprocess, sys
from launch.submit.local import child_processes
from pipeline.config.schema import DataConfig
from pipeline.data import build_loader
from pipeline.dist import DistInfo
cfg = DataConfig(root=sys.argv[1], backend="torch", augmentation="cifar", image_size=32, batch_size=2, num_threads=2)
batches = iter(build_loader(cfg, "train", DistInfo(), train=True, seed=0))
next(batches)
workers = [str(pid) for pid in child_processes(os.getpid())]
assert len(workers) == 2, workers
subprocess.run(["kill", "-TERM", *workers], check=True)
print(sum(len(labels) for _, labels in batches), flush=True)  # the rest of the epoch, read by the same workers
"""


def test_torch_loader_workers_outlive_the_jobs_sigterm_and_end_with_their_rank(cifar):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _WORKERS_UNDER_SIGTERM, str(cifar)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.split() == ["8"], proc.stdout + proc.stderr  # 11 samples: 5 x 2, less 2
    assert "Traceback" not in proc.stderr and "killed by signal" not in proc.stderr, proc.stderr

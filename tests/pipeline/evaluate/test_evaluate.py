"""Evaluation: the protocols' score averaging against direct computation, exactness over ranks, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.evaluate.job as evaluate_job
from launch.submit.local import torchrun_command
from pipeline.checkpoint.store import CheckpointDamaged, CheckpointStore
from pipeline.config import load_config
from pipeline.config.schema import DataConfig
from pipeline.data import build_loader
from pipeline.data.base import rank_range
from pipeline.dist import DistInfo
from pipeline.evaluate.__main__ import main as evaluate_main
from pipeline.evaluate.job import evaluate_run
from pipeline.evaluate.layer_responses import LayerResponses
from pipeline.evaluate.protocols import evaluate, view_scores
from pipeline.models import build
from tests.support import REPO
from tests.support.loaders import make_dataset, stored_images
from tests.support.training import env
from tests.workers.counting_evaluate import counting

MEAN, STD = np.array([120.0, 115.0, 100.0]), np.array([60.0, 58.0, 59.0])  # make_dataset's manifest stats


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("imagenet"), "imagenet", {"train": [4], "test": [3, 2]},
                        num_classes=5)


def _photos(root: Path, split: str) -> list:
    """The split's images straight from its tars, in shard order, decoded by PIL."""
    return stored_images(root, split, "jpg")


def _normalised(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(((np.asarray(img, dtype=np.float64) - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)


def _resize_shorter(img: Image.Image, shorter: int) -> Image.Image:
    w, h = img.size
    scale = shorter / min(w, h)
    return img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build("resnet18", num_classes=5).eval()
    for m in model.modules():  # non-trivial BN statistics, so that scores differ between views
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _data(root: Path) -> DataConfig:
    return DataConfig(root=str(root), backend="torch", augmentation="paper", image_size=48, resize_min=56,
                      resize_max=96, batch_size=4, eval_batch_per_gpu=2, num_threads=1)


@torch.no_grad()
def test_tencrop_scores_are_the_mean_of_the_ten_views_softmax(imagenet):
    model = _model()
    loader = build_loader(_data(imagenet), "test", DistInfo(), train=False, protocol="tencrop", eval_resize=56)
    ours = torch.cat([view_scores(model, images) for images, _ in loader])

    direct = []
    for photo in _photos(imagenet, "test"):  # resize shorter side to 56, 4 corners + centre of 48, and flips
        img = _resize_shorter(photo, 56)
        w, h = img.size
        lefts_tops = [(0, 0), (w - 48, 0), (0, h - 48), (w - 48, h - 48), (round((w - 48) / 2), round((h - 48) / 2))]
        crops = [img.crop((x, y, x + 48, y + 48)) for x, y in lefts_tops]
        crops += [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]
        views = torch.stack([_normalised(c) for c in crops])
        direct.append(model(views).softmax(dim=1).mean(dim=0))
    direct = torch.stack(direct)

    assert ours.shape == (5, 5)
    assert torch.allclose(ours, direct, atol=1e-5)
    # Not the same as scoring the centre view alone: averaging really happened.
    centre = torch.cat([model(images[:, 4]).softmax(dim=1) for images, _ in loader])
    assert not torch.allclose(ours, centre, atol=1e-3)


@torch.no_grad()
def test_multiscale_scores_are_the_mean_over_whole_images_at_each_scale(imagenet):
    model = _model()
    loader = build_loader(_data(imagenet), "test", DistInfo(), train=False, protocol="multiscale", scales=(40, 64))
    ours = torch.cat([view_scores(model, images) for images, _ in loader])
    direct = torch.stack([
        torch.stack([model(_normalised(_resize_shorter(p, s))[None])[0].softmax(0) for s in (40, 64)]).mean(0)
        for p in _photos(imagenet, "test")])
    assert torch.allclose(ours, direct, atol=1e-5)


def test_layer_responses_follow_each_3x3_layer_in_order():
    torch.manual_seed(0)
    model = build("cifar_resnet20", num_classes=10).eval()
    batches = [(torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))) for _ in range(3)]
    with LayerResponses(model) as responses:
        evaluate(model, batches)
    result = responses.result()
    assert len(result["std"]) == 19  # the 20-layer net: 19 3x3 layers and the classifier
    assert result["layers"][:3] == ["stem.1", "stages.0.0.bn1", "stages.0.0.bn2"]

    captured = {}
    bns = dict(model.named_modules())
    # Copied when the hook runs: before an in-place ReLU.
    hooks = [bns[name].register_forward_hook(lambda m, i, o, name=name: captured.setdefault(name, []).append(o.clone()))
             for name in result["layers"]]
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    for hook in hooks:
        hook.remove()
    direct = [float(torch.cat(captured[name]).double().std(unbiased=False)) for name in result["layers"]]
    assert result["std"] == pytest.approx(direct, rel=1e-9)


def test_cifar_data_refuses_a_multi_view_protocol(tmp_path):
    root = make_dataset(tmp_path / "cifar", "cifar", {"train": [4], "test": [3]}, num_classes=3)
    data = DataConfig(root=str(root), backend="torch", augmentation="cifar", image_size=32, batch_size=2,
                      eval_batch_per_gpu=2, num_threads=1)
    with pytest.raises(ValueError, match="tencrop protocol needs ImageNet-style images"):
        build_loader(data, "test", DistInfo(), train=False, protocol="tencrop")


def test_checkpoint_choices_are_checked(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint to use as 'last'"):
        store.select("last")
    store.commit(store.begin(5), 5)
    assert store.select("last").step == 5
    with pytest.raises(FileNotFoundError, match="none records val_top1_error"):
        store.select("best")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint directory"):
        store.select(str(tmp_path / "checkpoints" / "step-000000007"))
    assert store.select(str(tmp_path / "checkpoints" / "step-000000005")).step == 5


@pytest.mark.slow
def test_evaluation_is_exact_over_one_two_and_three_ranks_without_a_host_sync_per_batch(trained_digits, tmp_path,
                                                                                         monkeypatch):
    """297 test digits over 1, 2 and 3 ranks (149 + 148, 99 x 3): the same counts, errors and layer responses; and
    the evaluation reads nothing from the device per batch (counted): the hits stay where they are computed."""
    run_dir = tmp_path / "t"
    shutil.copytree(trained_digits[0], run_dir)
    seen: dict = {}
    monkeypatch.setattr(evaluate_job, "evaluate", counting(seen))
    one = evaluate_run(run_dir, "center", "last", layer_responses=True)
    single_responses = json.loads((run_dir / "layer_responses.json").read_text())
    # 8 batches of 40 on one rank, and the evaluation reads the device once in all: its hits, at the end.
    assert seen["batches"] == 8 and seen["syncs"] == {"tolist": 1}, seen

    for nproc in (2, 3):
        counts = tmp_path / f"counts-{nproc}"
        counts.mkdir()
        proc = subprocess.run(torchrun_command("tests.workers.counting_evaluate",
                                               [str(counts), str(run_dir), "--layer-responses"], nproc),
                              capture_output=True, text=True, cwd=REPO, env=env(), timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        more = json.loads((run_dir / "results.json").read_text())["eval"]["center"]
        assert more["world_size"] == nproc and one["world_size"] == 1
        for key in ("samples", "top1_error", "top5_error", "step"):
            assert more[key] == one[key], (nproc, key)
        assert more["samples"] == 297
        responses = json.loads((run_dir / "layer_responses.json").read_text())
        assert responses["layers"] == single_responses["layers"]
        assert responses["std"] == pytest.approx(single_responses["std"], rel=1e-9)
        for rank in range(nproc):
            seen = json.loads((counts / f"rank{rank}.json").read_text())
            # Every rank's part is several batches (per GPU: 40 each), still read once, plus the sum over ranks.
            lo, hi = rank_range(297, rank, nproc)
            assert seen["batches"] == -(-(hi - lo) // 40) >= 3
            assert seen["syncs"] == {"tolist": 2}, seen
    # Training (2 DDP ranks) ended with an evaluation of the same weights, BN statistics included.
    trained = json.loads((run_dir / "results.json").read_text())["train"]
    assert trained["top1_error"] == one["top1_error"]

    # A checkpoint whose file was damaged after it was written is named, not evaluated.
    state = CheckpointStore(run_dir / "checkpoints").latest().path / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointDamaged, match=f"{state}: 1000 bytes"):
        evaluate_run(run_dir, "center", "last")


def test_evaluate_names_what_is_missing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.evaluate", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr


def test_an_evaluation_takes_data_and_eval_overrides_and_nothing_else(trained_digits, tmp_path, capsys):
    run_dir = tmp_path / "t"
    shutil.copytree(trained_digits[0], run_dir)
    # Options and overrides in any order; the batch changes how the split is read, not what is counted.
    assert evaluate_main([str(run_dir), "--protocol", "center", "data.eval_batch_per_gpu=7",
                                   "--checkpoint", "last"]) == 0
    record = json.loads((run_dir / "results.json").read_text())["eval"]["center"]
    trained = json.loads((run_dir / "results.json").read_text())["train"]
    assert record["overrides"] == ["data.eval_batch_per_gpu=7"] and record["samples"] == 297
    assert record["top1_error"] == trained["top1_error"]
    assert load_config(str(run_dir / "config.yaml")).data.eval_batch_per_gpu == 40  # the run's own config kept
    # What the weights were trained as is not an evaluation's to change.
    assert evaluate_main([str(run_dir), "model.name=cifar_resnet8"]) == 2
    assert "error: an evaluation takes data.* and eval.* overrides only" in capsys.readouterr().err


def test_an_evaluation_job_preempted_is_submitted_again_whole():
    from launch.submit.jobs import EvalJob

    job = EvalJob("runs/r", "tencrop", "best", False, ["data.num_threads=2"])
    again = job.checkpoint()  # what submitit calls on SLURM's signal
    assert again.function is job and (job.which_checkpoint, job.overrides) == ("best", ["data.num_threads=2"])

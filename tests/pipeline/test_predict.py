"""`python -m pipeline.predict`: the demo's net names test digits, a run directory and its export agree, each image
is prepared exactly as the evaluation loader prepares it, and what cannot be predicted ends in one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch.demo import _write_samples
from pipeline.config.schema import DataConfig
from pipeline.data import build_loader, evaluation_views
from pipeline.data.dataset import open_split, read_manifest
from pipeline.dist import DistInfo
from pipeline.evaluate.config import run_config
from pipeline.evaluate.protocols import view_scores
from pipeline.export import export_run
from pipeline.export.preprocess import Preprocess
from pipeline.export.source import open_source
from pipeline.models import build
from pipeline.predict import Classifier, class_probabilities, main
from tests.support import REPO
from tests.support.loaders import make_dataset

DIGITS = 20


@pytest.fixture(scope="module")
def images(digits_dataset, tmp_path_factory) -> tuple[list[Path], Path]:
    """(the first 20 test digits as the demo writes them, named by their class; a photo of a cat, as JPEG)."""
    from PIL import Image
    from skimage.data import chelsea

    folder = tmp_path_factory.mktemp("images")
    photo = folder / "chelsea.jpg"
    Image.fromarray(chelsea()).save(photo, quality=90)
    return _write_samples(digits_dataset, folder, DIGITS), photo


def _predict(capsys, *args) -> dict:
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_demo_net_names_test_digits_and_its_export_agrees(trained_digits, digits_dataset, images, tmp_path,
                                                              capsys):
    run_dir, _ = trained_digits
    classes = {c.name for c in read_manifest(digits_dataset).classes}
    digits, photo = images
    result = _predict(capsys, run_dir, *digits, photo)
    assert result["net"]["kind"] == "run" and result["net"]["chosen"] == "best"
    assert result["protocol"] == "center"
    top = [p["top"] for p in result["predictions"]]
    named = [path.stem.split("-")[-1] for path in digits]  # test-0003-seven.png
    right = sum(t[0]["name"] == name for t, name in zip(top, named))
    assert right >= 15, f"{right} of {DIGITS} digits named right: {[t[0]['name'] for t in top]} vs {named}"
    for t in top:  # five classes of the run's, the most probable first
        assert len(t) == 5 and {c["name"] for c in t} <= classes
        assert [c["probability"] for c in t] == sorted((c["probability"] for c in t), reverse=True)
        assert 0 < sum(c["probability"] for c in t) <= 1 + 1e-6

    export = export_run(run_dir, ["safetensors"], out=tmp_path / "export").folder  # the run directory unwritten
    exported = _predict(capsys, export, *digits, photo)
    assert exported["net"]["kind"] == "export" and exported["net"]["checkpoint"] == result["net"]["checkpoint"]
    for ours, theirs in zip(result["predictions"], exported["predictions"]):
        assert [c["index"] for c in theirs["top"]] == [c["index"] for c in ours["top"]]
        assert [c["probability"] for c in theirs["top"]] == pytest.approx([c["probability"] for c in ours["top"]],
                                                                          abs=1e-6)

    assert main([str(export), str(photo), "--top", "3"]) == 0  # the text a user reads
    text = capsys.readouterr().out
    assert f"the export {export}" in text and "protocol: center" in text
    ranked = [line.split()[1] for line in text.splitlines() if line.startswith("  ") and line.split()[0][0].isdigit()]
    assert ranked == [c["name"] for c in exported["predictions"][-1]["top"][:3]]


def _first_batch(data: DataConfig, protocol: str) -> torch.Tensor:
    loader = build_loader(data, "test", DistInfo(), train=False, device=torch.device("cpu"), protocol=protocol)
    return next(iter(loader))[0]


def _views(preprocess: Preprocess, root: Path, count: int, protocol: str) -> torch.Tensor:
    split = open_split(root, "test")
    return torch.stack([preprocess.normalise(preprocess.views(split.read_sample(ref)[0], protocol))
                        for ref in split.sample_refs()[:count]])


def test_predict_prepares_an_image_as_the_evaluation_loader_does(trained_digits, tmp_path):
    run_dir, _ = trained_digits
    cfg = run_config(run_dir)
    data = dataclasses.replace(cfg.data, backend="torch", num_threads=0, output_dtype="float32")
    batch = _first_batch(data, "center")
    ours = _views(open_source(run_dir).preprocess, Path(cfg.data.root), len(batch), "center")
    assert torch.equal(ours.squeeze(1), batch)

    # ImageNet-style: photos of many sizes (some under the resize), JPEG, a per-pixel mean image of the view's size.
    root = make_dataset(tmp_path / "imagenet", "imagenet", {"train": [2], "test": [5]}, num_classes=3)
    np.save(root / "mean_image.npy", np.random.default_rng(0).uniform(80, 160, (64, 64, 3)).astype(np.float32))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stats"]["mean_image"] = "mean_image.npy"
    (root / "manifest.json").write_text(json.dumps(manifest))
    data = DataConfig(root=str(root), backend="torch", augmentation="paper", image_size=64, resize_min=72,
                      resize_max=96, batch_size=2, eval_batch_per_gpu=5, num_threads=0)
    _, geometry, finish = evaluation_views(data, "test")
    preprocess = Preprocess.of_evaluation(geometry, finish, data.normalize, data.image_size)
    assert preprocess.mean_image is not None
    net = build("resnet18", num_classes=3).eval()
    classifier = Classifier(net, preprocess, [], {})
    for protocol, views in (("center", 1), ("tencrop", 10)):
        batch = _first_batch(data, protocol)
        ours = _views(preprocess, root, 5, protocol)
        assert torch.allclose(ours, batch.view(5, views, 3, 64, 64), atol=1e-5), protocol
        # Scored as the evaluation scores them: ten crops by the mean of their softmax.
        with torch.no_grad():
            expected = view_scores(net, batch).softmax(dim=1) if views == 1 else view_scores(net, batch)
        split = open_split(root, "test")
        scores = class_probabilities(classifier, [preprocess.views(split.read_sample(ref)[0], protocol)
                                                  for ref in split.sample_refs()])
        assert torch.allclose(scores, expected, atol=1e-5), protocol


def test_what_cannot_be_predicted_ends_in_one_line(trained_digits, images, tmp_path, capsys):
    run_dir, _ = trained_digits
    digit = images[0][0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    for args, says in (([run_dir, digit, broken], f"error: {broken}: not an image"),
                       ([run_dir, digit, "--protocol", "ten_crop"], "error: a 32x32 (CIFAR-style) net has one view"),
                       ([run_dir.parent, digit], f"error: {run_dir.parent}: neither a run directory")):
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(says) and err.count("\n") == 1, err
    # The command itself, as a user runs it: a missing image named.
    proc = subprocess.run([sys.executable, "-m", "pipeline.predict", str(run_dir), str(tmp_path / "gone.png")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'gone.png'}: cannot read it: No such file or " \
                                                   "directory\n", proc.stderr

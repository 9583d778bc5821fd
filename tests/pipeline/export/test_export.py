"""A trained net exported and loaded by the libraries that receive it: torchvision and timm (strict), a fresh process
that rebuilds the net from model.json and model.safetensors, and ONNX Runtime; each on real images of the run's own
evaluation split, against the project's net in fp32.

The nets are trained for a few steps through `pipeline.train` (so the weights are not an initialisation): ImageNet
ResNet-18 (option B) and ResNet-50 "v1.5" (option B, stride on the 3x3) on data_prep's ImageNet shards at 224 pixels,
whose 224x224 mean image the exports carry; CIFAR ResNet-20 on the digits under DDP and under DeepSpeed ZeRO-1.
The four trainings run two at a time, one thread each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.engine.weights import load_weights
from pipeline.export import export_run
from pipeline.export.check import RELATIVE_TOLERANCE, check_images
from pipeline.export.source import open_source
from tests.support import REPO

pytestmark = pytest.mark.slow

IMAGENET = ["model.num_classes=4", "data.image_size=224", "data.batch_size=4", "data.eval_batch_per_gpu=8",
            "data.backend=torch", "data.num_threads=0", "engine.precision=fp32", "engine.channels_last=false",
            "model.bn_group_size=0"]
CIFAR = ["data.batch_size=32", "data.eval_batch_per_gpu=100", "data.backend=torch", "data.num_threads=0"]
COMMON = ["run.deterministic=true", "schedule.unit=iteration", "schedule.total=3", "schedule.milestones=[100]",
          "eval.every_epochs=0", "checkpoint.every_minutes=0", "logging.every_steps=1", "logging.wandb_mode=disabled"]
# W&B off: these runs are about their weights; the model artifact that a run logs to W&B is tested with W&B offline
# where training's W&B files are read back.

RUNS = {
    "resnet18": ("imagenet/resnet18.yaml", ["model.shortcut=B", *IMAGENET]),
    "resnet50_v15": ("imagenet/resnet50.yaml", ["model.bottleneck_stride=3x3", *IMAGENET]),
    "cifar20_ddp": ("cifar10/resnet20.yaml", CIFAR),
    "cifar20_zero1": ("cifar10/resnet20.yaml", ["engine.name=deepspeed", "engine.zero_stage=1", *CIFAR]),
}


@pytest.fixture(scope="module")
def runs(imagenet_shards, digits_dataset, tmp_path_factory) -> dict[str, Path]:
    """Each run of RUNS trained for 3 steps in one process; two trainings at a time."""
    out = tmp_path_factory.mktemp("export-runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    commands = []
    for name, (config, overrides) in RUNS.items():
        root = imagenet_shards if config.startswith("imagenet") else digits_dataset
        commands.append((name, [sys.executable, "-m", "pipeline.train", str(REPO / "configs" / config),
                                f"data.root={root}", f"run.out_dir={out}", f"run.name={name}", *COMMON, *overrides]))
    for pair in (commands[:2], commands[2:]):
        started = [(name, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)) for name, cmd in pair]
        for name, proc in started:
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"{name} failed:\n{log[-5000:]}"
    return {name: out / name for name in RUNS}


def _trained(run_dir: Path) -> None:
    """The weights moved from their initialisation: no BN bias is still zero."""
    weights = load_weights(run_dir / "checkpoints" / "step-000000003")
    still_zero = [k for k, v in weights.items() if k.endswith("bias") and k != "fc.bias" and not v.any()]
    assert not still_zero, still_zero


@pytest.mark.parametrize("name,twin", [("resnet18", "resnet18"), ("resnet50_v15", "resnet50")])
def test_torchvision_and_timm_load_the_export_strictly_and_agree(runs, name, twin):
    import timm
    import torchvision

    run_dir = runs[name]
    _trained(run_dir)
    source = open_source(run_dir)
    report = export_run(run_dir, ["torchvision"], source=source)
    check = report.checks["torchvision"]
    assert check.passed and check.images == 5 and check.split == "val", check  # the export checked itself
    assert source.preprocess.mean_image is not None  # 224 views: the paper's mean image is subtracted
    images = check_images(source)
    state = torch.load(report.files["torchvision"], weights_only=True)
    tolerance = RELATIVE_TOLERANCE * max(1.0, images.logits.abs().max().item())
    for label, net in (("torchvision", getattr(torchvision.models, twin)(num_classes=4)),
                       ("timm", timm.create_model(twin, pretrained=False, num_classes=4))):
        net.load_state_dict(state, strict=True)
        with torch.no_grad():
            logits = net.eval()(images.inputs)
        difference = (logits - images.logits).abs().max().item()
        assert difference <= tolerance, f"{label}: logits differ by {difference} (tolerance {tolerance})"
    description = json.loads((report.folder / "model.json").read_text())
    assert description["files"] == {"torchvision": "torchvision.pth"}
    assert description["architecture"]["name"] == twin and description["source"]["step"] == 3
    assert [c["id"] for c in description["classes"]] == ["n01440764", "n01443537", "n01484850", "n01491361"]


def test_the_paper_variant_is_refused_for_torchvision_and_exported_to_safetensors_and_onnx(runs, tmp_path):
    """ResNet-50 as the paper has it (the stride on the first 1x1) computes something else than torchvision's
    ResNet-50 with the same weights: refused in one line. The trained v1.5 run's weights are taken as the paper
    variant's (same shapes) by setting model.bottleneck_stride=1x1 in a copy of its config: a net of its own."""
    paper = tmp_path / "resnet50_paper"
    shutil.copytree(runs["resnet50_v15"], paper, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((paper / "config.yaml").read_text())
    config["model"]["bottleneck_stride"] = "1x1"
    (paper / "config.yaml").write_text(yaml.safe_dump(config))

    refused = subprocess.run([sys.executable, "-m", "pipeline.export", str(paper), "--to", "torchvision"],
                             cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.bottleneck_stride=1x1" in lines[0] and "no torchvision twin" in lines[0], \
        refused.stderr
    assert "--to safetensors or --to onnx" in lines[0]
    assert not (paper / "export").exists()  # refused before anything is written

    source = open_source(paper)
    report = export_run(paper, ["safetensors", "onnx"], source=source)
    assert all(c.passed for c in report.checks.values()), report.checks
    _rebuilt_in_a_fresh_process(report.folder, check_images(source))


def test_cifar_resnet20_under_ddp_and_deepspeed_export_alike(runs, tmp_path):
    """CIFAR ResNet-20 to safetensors and ONNX; the DeepSpeed ZeRO-1 twin's export equals the DDP run's where their
    weights are equal (DeepSpeed keeps the whole fp32 module in mp_rank_00_model_states.pt at ZeRO stages 0-2)."""
    ddp, zero1 = runs["cifar20_ddp"], runs["cifar20_zero1"]
    _trained(ddp)
    ddp_weights = load_weights(ddp / "checkpoints" / "step-000000003")
    zero1_weights = load_weights(zero1 / "checkpoints" / "step-000000003")
    assert ddp_weights.keys() == zero1_weights.keys()
    assert all(torch.equal(ddp_weights[k], zero1_weights[k]) for k in ddp_weights), "the twins' weights differ"

    source = open_source(ddp)
    report = export_run(ddp, ["safetensors", "onnx"], out=tmp_path / "ddp", source=source)
    twin = export_run(zero1, ["safetensors"], out=tmp_path / "zero1")
    from safetensors.torch import load_file

    ours, theirs = load_file(report.files["safetensors"]), load_file(twin.files["safetensors"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    description = json.loads((report.folder / "model.json").read_text())
    assert description["architecture"] == {"name": "cifar_resnet20", "num_classes": 10, "shortcut": "A",
                                           "bottleneck_stride": "1x1"}
    assert description["preprocess"]["mean_image"] == "mean_image.npy"  # the exact 32x32 mean of the train split
    assert description["reported"]["center"]["samples"] == 297  # training's final evaluation of this checkpoint
    assert [c["name"] for c in description["classes"]][:3] == ["zero", "one", "two"]
    _rebuilt_in_a_fresh_process(report.folder, check_images(source))


REBUILD = """
import json, sys
from pathlib import Path
import numpy as np, onnxruntime, torch
from safetensors.torch import load_file
from pipeline.models import build

folder = Path(sys.argv[1])
description = json.loads((folder / "model.json").read_text())
arch, pre = description["architecture"], description["preprocess"]
net = build(arch["name"], num_classes=arch["num_classes"], shortcut=arch["shortcut"] or "default",
            bottleneck_stride=arch["bottleneck_stride"])
net.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
views = torch.from_numpy(np.load(folder / "views.npy")).permute(0, 3, 1, 2).float()  # RGB 0-255, NCHW
mean = (torch.from_numpy(np.load(folder / pre["mean_image"])).permute(2, 0, 1) if pre["mean_image"]
        else torch.tensor(pre["mean"]).view(3, 1, 1))
x = (views - mean) / torch.tensor(pre["std"]).view(3, 1, 1)
with torch.no_grad():
    rebuilt = net.eval()(x).numpy()
session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
onnx = session.run(["logits"], {"pixels": views.numpy()})[0]
np.save(folder / "rebuilt.npy", rebuilt)
np.save(folder / "onnx.npy", onnx)
"""


def _rebuilt_in_a_fresh_process(folder: Path, images) -> None:
    """A process that knows nothing of the run rebuilds the net from model.json (our registry's builder), its input
    from model.json's preprocessing, and runs model.onnx in ONNX Runtime: both give our logits."""
    np.save(folder / "views.npy", images.views.numpy())
    subprocess.run([sys.executable, "-c", REBUILD, str(folder)], cwd=REPO, check=True, capture_output=True)
    ours = images.logits.numpy()
    tolerance = RELATIVE_TOLERANCE * max(1.0, np.abs(ours).max())
    for name in ("rebuilt", "onnx"):
        difference = np.abs(np.load(folder / f"{name}.npy") - ours).max()
        assert difference <= tolerance, f"{name}: logits differ by {difference} (tolerance {tolerance})"

"""The paper's biggest nets, trained for real on the CPU through `pipeline.train` and their own configs.

ResNet-152 (configs/imagenet/resnet152.yaml: bf16, channels_last) reads ImageNet-format shards that
data_prep made from `data_prep synth`'s ILSVRC tree, for a few steps with 2 ranks under each engine.
ResNet-1202 (configs/cifar10/resnet1202.yaml) trains with activation checkpointing, is SIGKILLed after a
checkpoint and resumed, and must end bitwise where an uninterrupted run ends. Sizes are the smallest
that still run the real code: 64 px crops, a few images per batch, a handful of steps.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.engine.deepspeed_engine import DEEPSPEED_TAG
from pipeline.engine.weights import load_weights
from pipeline.run.logger import read_metrics
from tests.support import REPO
from tests.support.training import assert_bitwise_equal, final_state, final_weights, train, train_and_kill

pytestmark = pytest.mark.slow

RESNET152 = str(REPO / "configs" / "imagenet" / "resnet152.yaml")
RESNET1202 = str(REPO / "configs" / "cifar10" / "resnet1202.yaml")
# One process for ResNet-1202: a step of the 1202-layer net costs seconds on a CPU core, and a whole, a
# killed and a resumed run must fit the test budget. Kill-and-resume over 2 ranks is tested on small nets
# (tests/pipeline/train/test_train.py); this test is about the depth, the recomputation and their checkpoints.
NPROC_1202 = 1


def _data_prep(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "data_prep", *args], check=True, cwd=REPO, capture_output=True)


@pytest.fixture(scope="module")
def small_cifar_shards(tmp_path_factory) -> Path:
    """The digits in CIFAR-10's format, 4 per class: 40 train, 10 test (a cheap final evaluation)."""
    root = tmp_path_factory.mktemp("cifar")
    _data_prep("synth", "--kind", "cifar10", "--per-class", "4", "--out", str(root / "raw"))
    _data_prep("cifar10", "--src", str(root / "raw" / "cifar-10-batches-py"), "--out", str(root / "shards"),
               "--no-progress")
    return root / "shards"


def _bn_biases(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every BN layer's bias: zero at initialisation whatever the seed, so a change means a real step."""
    return {k[:-len("running_mean")] + "bias": weights[k[:-len("running_mean")] + "bias"]
            for k in weights if k.endswith(".running_mean")}


@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_resnet152_trains_on_imagenet_shards_with_2_ranks(imagenet_shards, tmp_path, engine):
    """ResNet-152 in its config's bf16/channels_last, 2 optimizer steps over 2 ranks, then evaluated."""
    overrides = [f"data.root={imagenet_shards}", f"run.out_dir={tmp_path}", "run.name=t", "run.deterministic=true",
                 f"engine.name={engine}", *(["engine.zero_stage=1"] if engine == "deepspeed" else []),
                 "data.image_size=64", "data.resize_min=72", "data.resize_max=96", "eval.resize=72",
                 "data.batch_size=4", "data.eval_batch_per_gpu=4", "data.num_threads=1",
                 "schedule.unit=iteration", "schedule.total=2", "schedule.milestones=[100]",
                 "eval.every_epochs=0", "checkpoint.every_minutes=0", "logging.every_steps=1",
                 "logging.wandb_mode=disabled"]
    train(2, overrides, config=RESNET152)
    run_dir = tmp_path / "t"

    losses = {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values()), losses
    results = json.loads((run_dir / "results.json").read_text())["train"]
    assert (results["step"], results["samples"]) == (2, 5)  # every val image once across the 2 ranks
    # A table shrunk to 2 steps on a 4-class dataset, as a user tries one: training's start says both.
    warnings = [m["event"] for m in read_metrics(run_dir) if str(m.get("event")).startswith("warning: ")]
    assert any("schedule.milestones [100] are at or past schedule.total (2 iterations)" in w for w in warnings)
    assert any(f"model.num_classes (1000) is above the 4 classes of {imagenet_shards / 'manifest.json'}" in w
               for w in warnings), warnings

    checkpoint = run_dir / "checkpoints" / "step-000000002"
    assert (checkpoint / "COMPLETE").exists()
    if engine == "deepspeed":  # DeepSpeed's own layout, ZeRO-1: one optimizer slice per rank
        files = sorted(p.name for p in (checkpoint / DEEPSPEED_TAG).iterdir())
        assert "mp_rank_00_model_states.pt" in files and sum("optim_states" in f for f in files) == 2, files
    weights = load_weights(checkpoint)
    assert sum(k.endswith(".running_mean") for k in weights) == 155  # ResNet-152's BN layers
    assert weights["fc.weight"].shape == (1000, 2048)
    assert all(torch.isfinite(w.float()).all() for w in weights.values() if w.is_floating_point())
    # The optimizer stepped every layer: no BN bias is still at its initial zeros.
    still_zero = [k for k, b in _bn_biases(weights).items() if not b.any()]
    assert not still_zero, still_zero


def test_resnet1202_with_activation_checkpointing_is_killed_and_resumed_bitwise(small_cifar_shards, tmp_path):
    """ResNet-1202, blocks recomputed in backward, SIGKILLed after its step-2 checkpoint, resumed to step 4."""
    def overrides(out: Path) -> list:
        return [f"data.root={small_cifar_shards}", f"run.out_dir={out}", "run.name=t", "run.deterministic=true",
                "engine.activation_checkpointing=true", "data.batch_size=4", "data.eval_batch_per_gpu=10",
                "data.num_threads=1", "schedule.total=4", "eval.every_steps=0", "checkpoint.every_steps=2",
                "checkpoint.every_minutes=0", "checkpoint.keep_last=10", "logging.every_steps=1",
                "logging.wandb_mode=disabled"]  # W&B off: this test is about the 1202-layer net's recomputation across
    # a kill; kills and resumes with W&B offline (the default) are the kill soak's and the SLURM tests'.

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(NPROC_1202, overrides(whole), config=RESNET1202)
    train_and_kill(NPROC_1202, overrides(broken), broken / "t", after_checkpoint=2, config=RESNET1202)
    assert not (broken / "t" / "checkpoints" / "step-000000004").exists()  # killed before the end
    log = train(NPROC_1202, overrides(broken), config=RESNET1202)
    assert "resuming" in log and "from step 2" in log

    losses = {m["step"]: m["loss"] for m in read_metrics(whole / "t") if "loss" in m}
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values()), losses
    weights = final_weights(whole / "t", 4)
    assert sum(k.endswith(".running_mean") for k in weights) == 1 + 3 * 200 * 2  # stem + 600 blocks of 2 BN layers
    assert not [k for k, v in _bn_biases(weights).items() if not v.any()]  # every layer trained
    assert_bitwise_equal(final_state(whole / "t", 4), final_state(broken / "t", 4), "weights and optimizer state")
    resumed = {m["step"]: m["loss"] for m in read_metrics(broken / "t") if "loss" in m}
    assert resumed == losses  # the same loss at every step, before and after the kill

"""Mixed precision trained for real: bf16 with both engines (one recipe: it learns, it resumes bitwise, and
DeepSpeed trains DDP's numerics), fp16 with DDP's scaler.

Every cell runs `pipeline.train` under torchrun (2 ranks, gloo, CPU autocast) and proves that the lower
precision was used, not only configured: the ranks are started through this file (`python -m
tests.pipeline.engine.test_mixed_precision <train args>`), which records the dtypes every layer computed in and held its
weights in during the training forward passes, then runs `pipeline.train` unchanged. A test that would
pass in fp32 proves nothing, so each asserts those dtypes and what the checkpoint holds (fp32 weights, BN
and optimizer state; DDP's grad scaler state).

Cells: ddp-bf16 (autocast, fp32 weights), deepspeed-bf16-zero0 and -zero1 (DeepSpeed's torch_autocast mode:
the same autocast, fp32 weights and BN, gradients reduced in fp32; ZeRO-1 splits the optimizer state over the
ranks), ddp-fp16 (autocast and torch.amp.GradScaler, on the device types where the scaler runs).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from launch.submit.local import torchrun_command
from pipeline.checkpoint.store import CheckpointStore
from pipeline.dist import DistInfo
from pipeline.dist.process import resolve_device
from pipeline.engine.deepspeed_engine import DEEPSPEED_TAG
from pipeline.engine.weights import load_weights
from pipeline.models import build as build_model
from pipeline.run.logger import read_metrics
from tests.support import DEMO_CONFIG, REPO
from tests.support.ci import skip_or_fail_under_ci
from tests.support.training import (
    assert_bitwise_equal,
    env,
    final_state,
    kill_when,
    optimizer_state,
    small_run,
    train,
)

pytestmark = pytest.mark.slow

PROBE_DIR = "MIXED_PRECISION_PROBE_DIR"  # where each probed rank writes `rank-<r>.json`
HELD_SAVE = "MIXED_PRECISION_HELD_SAVE"  # <folder>:<step>: that checkpoint's background write is held

# Each cell's overrides on top of `small_run` (40 steps of ResNet-8 on the digits, a checkpoint every 8).
CELLS: dict[str, Sequence[str]] = {
    "ddp-bf16": ("engine.name=ddp", "engine.precision=bf16"),
    "deepspeed-bf16-zero0": ("engine.name=deepspeed", "engine.zero_stage=0", "engine.precision=bf16"),
    "deepspeed-bf16-zero1": ("engine.name=deepspeed", "engine.zero_stage=1", "engine.precision=bf16"),
    "ddp-fp16": ("engine.name=ddp", "engine.precision=fp16"),
}
BF16, FP16, FP32 = str(torch.bfloat16), str(torch.float16), str(torch.float32)


# --- the probe: what the ranks computed in ---------------------------------------------------------------

def _probe_main(argv: list[str]) -> int:
    """Run `pipeline.train` with a global forward hook that records, per layer type, the dtypes of the
    outputs and weights of every training forward pass (grad enabled; evaluation is left out).

    With `HELD_SAVE=<folder>:<step>` the background writer of that step's checkpoint stops before its first file,
    after writing `<folder>/held-rank<r>` (see `train_and_kill_during_save`)."""
    from torch import nn

    from pipeline.train.__main__ import main

    if os.environ.get(HELD_SAVE):
        _hold_the_save(*os.environ[HELD_SAVE].rsplit(":", 1))

    seen: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))

    def record(module: nn.Module, inputs, output) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and next(module.children(), None) is None:
            kind = type(module).__name__
            seen[kind]["output"].add(str(output.dtype))
            seen[kind]["weight"].update(str(p.dtype) for p in module.parameters(recurse=False))

    hook = nn.modules.module.register_module_forward_hook(record)  # reads only: the computation is unchanged
    try:
        return main(argv)
    finally:
        hook.remove()
        out = Path(os.environ[PROBE_DIR])
        out.mkdir(parents=True, exist_ok=True)
        record_ = {kind: {k: sorted(v) for k, v in d.items()} for kind, d in seen.items()}
        (out / f"rank-{int(os.environ.get('RANK', '0'))}.json").write_text(json.dumps(record_, sort_keys=True))


def _hold_the_save(folder: str, step: str) -> None:
    """The writer thread of checkpoint `step` waits forever (training goes on); it says so by a file."""
    import threading

    from pipeline.checkpoint import background as background_save

    write = background_save.save_state

    def held(path: Path, state) -> object:
        if f"step-{int(step):09d}.tmp" in str(path):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / f"held-rank{os.environ['RANK']}").touch()
            threading.Event().wait()
        return write(path, state)

    background_save.save_state = held


def train_and_kill_during_save(nproc: int, overrides: Sequence[str], run_dir: Path, held_step: int,
                               trained_past: int) -> None:
    """Train with the background write of checkpoint `held_step` held on every rank, and SIGKILL every process once
    training has logged step `trained_past`: a node lost while its checkpoint was being written."""
    gate = run_dir.parent / "held"
    cmd = torchrun_command("tests.pipeline.engine.test_mixed_precision", [DEMO_CONFIG, *overrides], nproc)
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env(), PROBE_DIR: str(run_dir.parent / "probe"),
                                                HELD_SAVE: f"{gate}:{held_step}"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def logged_step() -> int:
        return max([m["step"] for m in read_metrics(run_dir) if "loss" in m], default=0) \
            if (run_dir / "metrics.jsonl").exists() else 0

    kill_when(proc, lambda: all((gate / f"held-rank{r}").exists() for r in range(nproc)) and
              logged_step() >= trained_past, "training did not go on past the held checkpoint in time")


def train_probed(nproc: int, overrides: Sequence[str], probe_dir: Path) -> list[dict]:
    """`pipeline.train` in `nproc` ranks (like `training.train`); returns each rank's probe record."""
    cmd = torchrun_command("tests.pipeline.engine.test_mixed_precision", [DEMO_CONFIG, *overrides], nproc)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**env(), PROBE_DIR: str(probe_dir)},
                          timeout=600)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((probe_dir / f"rank-{r}.json").read_text()) for r in range(nproc)]


def assert_computed_in(probes: list[dict], dtype: str, weights: str) -> None:
    """Every rank's convolutions and linear layers computed in `dtype` from weights held in `weights`."""
    for rank, probe in enumerate(probes):
        for kind in ("Conv2d", "Linear"):
            assert probe[kind] == {"output": [dtype], "weight": [weights]}, (rank, kind, probe)
        # BN (the CIFAR configs' BatchNorm2d in groups of 64): autocast runs it on fp32 weights, under either engine.
        assert probe["GhostBatchNorm2d"]["weight"] == [weights], (rank, probe)


# --- the runs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whole_run(digits_dataset, tmp_path_factory):
    """`whole_run(cell)`: the cell's uninterrupted 40-step run, trained once (probed) and shared by its tests.

    Returns (run directory, probe records of the 2 ranks). Each rank gets 32 of the digits' 64 images a step;
    the runs say that their recipe was made for 64 per GPU, so that their start is one that warns.
    """
    runs: dict = {}

    def get(cell: str):
        if cell not in runs:
            out = tmp_path_factory.mktemp(cell)
            # W&B off: these runs are about numerics (no stop, resume or failure); the kill soak runs W&B offline.
            probes = train_probed(2, small_run(digits_dataset, out, "logging.wandb_mode=disabled", *CELLS[cell],
                                               "data.recipe_batch_per_gpu=64"), out / "probe")
            runs[cell] = (out / "t", probes)
        return runs[cell]

    return get


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:09d}"


# --- bf16: both engines learn and resume bitwise -----------------------------------------------------------

@pytest.mark.parametrize("cell", ["ddp-bf16", "deepspeed-bf16-zero0", "deepspeed-bf16-zero1"])
def test_bf16_learns(whole_run, cell):
    run_dir, probes = whole_run(cell)
    curve = losses(run_dir)
    assert len(curve) == 20 and all(math.isfinite(x) for x in curve), curve
    assert sum(curve[-5:]) / 5 < 0.95 * sum(curve[:5]) / 5, f"{cell}: the loss did not fall: {curve}"

    final = checkpoint(run_dir, 40)
    # Autocast under both engines: bf16 compute from fp32 weights, which the checkpoint holds (BN's running
    # statistics included).
    assert_computed_in(probes, BF16, weights=FP32)
    assert {t.dtype for t in load_weights(final).values() if t.is_floating_point()} == {torch.float32}
    if cell.startswith("ddp"):
        state = torch.load(final / "state.pt", weights_only=False)
        assert state["scaler"] == {}  # disabled: bf16 has fp32's range
    elif cell.endswith("zero1"):
        # ZeRO 1: each rank's file holds its slice of the fp32 weights' optimizer state.
        wrapper = optimizer_state(final)
        assert sorted(p.name for p in (final / DEEPSPEED_TAG).glob("*_optim_states.pt")) == [
            f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]
        assert [s["partition_count"] for s in wrapper] == [[2], [2]]
        slices = [t for s in wrapper for t in s["single_partition_of_fp32_groups"]]
        # Every parameter (ZeRO's flat partitions may hold some padding as well).
        parameters = sum(p.numel() for p in build_model("cifar_resnet8", num_classes=10).parameters())
        assert {t.dtype for t in slices} == {torch.float32} and sum(t.numel() for t in slices) >= parameters
    # The start says what each rank gets of the batch, and that it is below the recipe's 64.
    start = next(m for m in read_metrics(run_dir) if m.get("event") == "start")
    assert (start["images_per_gpu"], start["bn_batch"]) == (32, 32)
    # (On CPU the ranks are processes, and the warning says so.)
    ranks = "2 GPUs is 32 images per GPU" if torch.cuda.is_available() else "2 processes is 32 images per process"
    assert any(m.get("event", "").startswith(f"warning: data.batch_size 64 over {ranks}, below the 64")
               for m in read_metrics(run_dir))


def test_deepspeed_bf16_trains_ddps_numerics(whole_run):
    """The same weights and data under DDP and DeepSpeed (ZeRO 0 and 1) in bf16: BN's weights and statistics
    fp32 in every checkpoint, and the weights after 16 and 40 steps bit-equal (tolerance 0: on 2 ranks the
    average of two fp32 gradients does not depend on the order of the reduction; with more ranks it would,
    by rounding)."""
    ddp = whole_run("ddp-bf16")[0]
    for cell in ("deepspeed-bf16-zero0", "deepspeed-bf16-zero1"):
        deepspeed = whole_run(cell)[0]
        for step in (16, 40):
            a, b = load_weights(checkpoint(ddp, step)), load_weights(checkpoint(deepspeed, step))
            assert a.keys() == b.keys()
            # BN's weights, biases and running statistics among them.
            assert {t.dtype for t in (*a.values(), *b.values()) if t.is_floating_point()} == {torch.float32}
            worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
            assert worst == 0.0, f"{cell} at step {step}: weights differ from DDP's by up to {worst}"


@pytest.mark.parametrize("cell", ["ddp-bf16", "deepspeed-bf16-zero1"])
def test_bf16_killed_while_a_checkpoint_is_written_resumes_bitwise_identical(whole_run, digits_dataset, tmp_path,
                                                                            cell):
    """Checkpoints are written in the background: the write of step 24's is held on every rank while training goes on
    past it, then every process is SIGKILLed (at step 28 or later). Step 24 was never marked complete, so 23 (the first
    epoch's end) is the latest; resumed from it, step 40 equals the uninterrupted run's, bit for bit (weights, and the
    optimizer state with DeepSpeed's fp32 master weights)."""
    whole, _ = whole_run(cell)
    # W&B off: this test is about the saved state across a kill; kills with W&B offline (the default) are the kill
    # soak's, whose kills land during background writes too.
    overrides = small_run(digits_dataset, tmp_path, "logging.wandb_mode=disabled", *CELLS[cell])
    broken = tmp_path / "t"
    train_and_kill_during_save(2, overrides, broken, held_step=24, trained_past=28)
    store = CheckpointStore(broken / "checkpoints")
    assert (broken / "checkpoints" / f"step-{24:09d}.tmp").is_dir() and not checkpoint(broken, 24).exists()
    assert [c.step for c in store.complete()] == [8, 16, 23]
    log = train(2, overrides)
    assert "resuming" in log and "from step 23" in log
    assert_bitwise_equal(final_state(whole, 40), final_state(broken, 40), "weights and optimizer state")
    # The losses logged after the checkpoint it resumed from are the uninterrupted run's (from the first whole
    # logging window: the record of step 24 averages steps 23-24 in one run and step 24 alone in the resumed one).
    after = lambda d: {m["step"]: m["loss"] for m in read_metrics(d) if "loss" in m and m["step"] > 24}
    assert after(broken) == after(whole)


# --- fp16: DDP with the gradient scaler, where the scaler runs -----------------------------------------------

def fp16_scaler_problem(device: torch.device) -> str | None:
    """Why torch.amp.GradScaler with fp16 autocast cannot train on `device` here, or None when it can.

    A probe, not a version check: a tiny conv net takes two scaled steps the way DDPEngine does them.
    """
    from torch import nn

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scaler = torch.amp.GradScaler(device.type)
        if not scaler.is_enabled():
            said = "; ".join(str(w.message) for w in caught) or "no reason given"
            return f"torch.amp.GradScaler({device.type!r}) disables itself in torch {torch.__version__}: {said}"
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        net = net.to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        images, labels = torch.randn(4, 3, 8, 8, device=device), torch.tensor([0, 1, 0, 1], device=device)
        for _ in range(2):
            with torch.autocast(device.type, dtype=torch.float16):
                logits = net(images)
            if logits.dtype != torch.float16:
                return f"fp16 autocast on {device.type} computes a linear layer in {logits.dtype}, not float16"
            optimizer.zero_grad()
            scaler.scale(torch.nn.functional.cross_entropy(logits.float(), labels)).backward()
            scaler.step(optimizer)
            scaler.update()
    except Exception as e:  # noqa: BLE001 - any failure is the reason to skip, reported as it is
        return f"fp16 autocast with torch.amp.GradScaler({device.type!r}) fails in torch {torch.__version__}: {e!r}"
    return None


def test_ddp_fp16_trains_with_the_grad_scaler(digits_dataset, tmp_path):
    device = resolve_device("auto", DistInfo())  # where the ranks will train
    problem = fp16_scaler_problem(device)
    if problem:
        skip_or_fail_under_ci(problem)
    # 8 steps of batch 16, checkpoints at 4 and 8: enough to see the scaled steps move the weights (fp16
    # kernels on a CPU are slow).
    probes = train_probed(2, small_run(digits_dataset, tmp_path, "logging.wandb_mode=disabled", *CELLS["ddp-fp16"],
                                       "data.batch_size=16", "schedule.total=8", "schedule.milestones=[]",
                                       "checkpoint.every_steps=4"),
                          tmp_path / "probe")
    run_dir = tmp_path / "t"
    assert_computed_in(probes, str(torch.float16), weights=FP32)
    curve = losses(run_dir)
    assert len(curve) == 4 and all(math.isfinite(x) for x in curve), curve
    early, late = (torch.load(checkpoint(run_dir, s) / "state.pt", weights_only=False) for s in (4, 8))
    scaler = late["scaler"]
    assert {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= scaler.keys()
    assert math.isfinite(scaler["scale"]) and scaler["scale"] > 0, scaler
    # Steps the scaler skipped (an inf/nan gradient) reset its tracker; those it took count up to 8.
    assert 0 < scaler["_growth_tracker"] <= 8, scaler
    moved = [k for k, v in late["model"].items() if v.is_floating_point() and not torch.equal(v, early["model"][k])]
    assert moved, "no weight changed between steps 4 and 8: every fp16 step was skipped"


if __name__ == "__main__":  # a probed rank (see `train_probed`)
    sys.exit(_probe_main(sys.argv[1:]))

"""Run `pipeline.train` for real in N processes (torchrun, gloo on CPU), and read what it left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from launch.submit.local import local_command, process_tree
from pipeline.engine.deepspeed_engine import DEEPSPEED_TAG
from pipeline.engine.weights import load_weights
from tests.support import DEMO_CONFIG, REPO


def small_run(data_root: Path, out_dir: Path, *extra: str) -> list[str]:
    """Overrides for a short, deterministic run on the digits: ResNet-8, 40 iterations."""
    return [f"data.root={data_root}", f"run.out_dir={out_dir}", "run.name=t", "run.deterministic=true",
            "model.name=cifar_resnet8", "schedule.unit=iteration", "schedule.total=40", "schedule.milestones=[30]",
            "logging.every_steps=2", "eval.every_epochs=0", "checkpoint.every_steps=8", "checkpoint.keep_last=10",
            *extra]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(nproc: int, overrides: Sequence[str], config: str = DEMO_CONFIG, timeout: int = 600) -> str:
    proc = subprocess.run(local_command(config, overrides, nproc), capture_output=True, text=True, cwd=REPO,
                          env=env(), timeout=timeout)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def train_and_kill(nproc: int, overrides: Sequence[str], run_dir: Path, after_checkpoint: int,
                   config: str = DEMO_CONFIG) -> None:
    """Start training and SIGKILL every process once the checkpoint of step `after_checkpoint` is complete."""
    proc = subprocess.Popen(local_command(config, overrides, nproc), cwd=REPO, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run_dir / "checkpoints" / f"step-{after_checkpoint:09d}" / "COMPLETE"
    kill_when(proc, marker.exists, "no checkpoint appeared in time")


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], too_late: str, timeout: float = 300) -> None:
    """Wait for `condition` while training runs, then SIGKILL every process of it: every rank and the launcher,
    without warning. torchrun starts each worker in a session of its own, so the launcher's process group does
    not reach them: the workers are found as its children."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, too_late
        time.sleep(0.02)
    for pid in [*process_tree(proc.pid)[1:], proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:09d}"


def final_weights(run_dir: Path, step: int) -> dict:
    return torch.load(checkpoint_dir(run_dir, step) / "state.pt", weights_only=True)["model"]


def optimizer_state(checkpoint: Path) -> list[dict]:
    """The optimizer's state in a checkpoint of either engine, one record per file that holds some: DDP's
    `state.pt`; DeepSpeed's own files, ZeRO 0's beside the weights, ZeRO >= 1's one per rank (its partition)."""
    folder = checkpoint / DEEPSPEED_TAG
    if not folder.is_dir():
        return [torch.load(checkpoint / "state.pt", weights_only=False)["optimizer"]]
    partitions = sorted(folder.glob("*_optim_states.pt"))
    if partitions:
        return [torch.load(p, weights_only=False)["optimizer_state_dict"] for p in partitions]
    return [torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["optimizer"]]


def tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state (dicts, lists), by its path: to compare two states bitwise."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return {path: t for key, value in items for path, t in tensors(value, f"{prefix}/{key}").items()}


def final_state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """What training carries on from, out of the run's checkpoint of `step`: every tensor of the weights (BN's
    statistics included, under "model/") and of the optimizer state (under "optimizer/": SGD's momentum buffers,
    DeepSpeed's fp32 master weights). A resume that equals the uninterrupted run holds the same in both."""
    checkpoint = checkpoint_dir(run_dir, step)
    state = {**tensors(load_weights(checkpoint), "model"), **tensors(optimizer_state(checkpoint), "optimizer")}
    # Without momentum buffers the comparison would be of the weights alone (SGD keeps none before its first step).
    assert any(path.endswith("/momentum_buffer") for path in state), f"{checkpoint}: no SGD momentum buffers"
    return state


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a and a.keys() == b.keys(), what
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]}"

"""Training for real: several processes over gloo, DALI reading data_prep's shards, both engines."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import dist
from pipeline.checkpoint.store import CheckpointStore
from pipeline.config import load_config
from pipeline.evaluate.job import evaluate_run
from pipeline.run.logger import read_metrics
from pipeline.train.loop import train as train_in_process
from pipeline.train.outcome import Finished, Interrupted
from tests.support import DEMO_CONFIG, REPO
from tests.support.training import (
    assert_bitwise_equal,
    env,
    final_state,
    small_run,
    train,
    train_and_kill,
)

pytestmark = pytest.mark.slow


def test_ddp_learns_the_digits_under_5_percent(trained_digits):
    run_dir, out = trained_digits
    results = json.loads((run_dir / "results.json").read_text())["train"]
    assert results["samples"] == 297  # every test sample once across the two ranks
    assert results["top1_error"] < 5.0, out[-2000:]
    losses = [m["loss"] for m in read_metrics(run_dir) if "loss" in m]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert "test error:" in out


def test_deepspeed_loss_falls(digits_dataset, tmp_path):
    train(2, small_run(digits_dataset, tmp_path, "engine.name=deepspeed", "engine.zero_stage=1",
                       "logging.wandb_mode=disabled", "schedule.total=70", "schedule.milestones=[60]",
                       "optim.lr=0.05", "logging.every_steps=5"))
    losses = [m["loss"] for m in read_metrics(tmp_path / "t") if "loss" in m]
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses
    # `pipeline.evaluate` reads DeepSpeed's checkpoint layout and scores what training scored.
    evaluated = evaluate_run(tmp_path / "t", "center", "best")
    trained = json.loads((tmp_path / "t" / "results.json").read_text())["train"]
    assert (evaluated["samples"], evaluated["top1_error"]) == (297, trained["top1_error"])


def cut_in_half(path: Path) -> None:
    """Damage a checkpoint file the way a full disk or a crash does, keeping its COMPLETE marker."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_deepspeed_resume_from_the_newest_intact_checkpoint_is_bitwise_identical(digits_dataset, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    extra = ("engine.name=deepspeed", "logging.wandb_mode=offline")
    train(2, small_run(digits_dataset, whole, *extra))
    overrides = small_run(digits_dataset, broken, *extra)
    train_and_kill(2, overrides, broken / "t", after_checkpoint=16)
    # DeepSpeed's own file of the newest checkpoint damaged: named, and the run goes back one checkpoint.
    store = CheckpointStore(broken / "t" / "checkpoints")
    newest, previous = store.complete()[-1], store.complete()[-2]
    damaged = newest.path / "deepspeed" / "mp_rank_00_model_states.pt"
    cut_in_half(damaged)
    log = train(2, overrides)
    assert f"{damaged}: " in log and f"from step {previous.step}" in log and "Traceback" not in log
    # Said as an event too, which the report and W&B see.
    named = [m["event"] for m in read_metrics(broken / "t") if str(m.get("event")).startswith("warning: checkpoint")]
    assert len(named) == 1 and f"checkpoint {newest.path} (" in named[0], named
    assert named[0].endswith(f"is damaged and was not used; resumed from {previous.path.name}"), named
    assert_bitwise_equal(final_state(whole / "t", 40), final_state(broken / "t", 40), "weights and optimizer state")


def test_deepspeed_runs_in_one_process_without_a_launcher(digits_dataset, tmp_path):
    """`python -m pipeline.train ... engine.name=deepspeed`: no torchrun, no SLURM, nobody sets LOCAL_RANK."""
    overrides = small_run(digits_dataset, tmp_path, "engine.name=deepspeed", "engine.zero_stage=1",
                          "logging.wandb_mode=disabled", "schedule.total=10", "schedule.milestones=[]")
    launcher_free = {k: v for k, v in env().items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
                     and not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", DEMO_CONFIG, *overrides], cwd=REPO,
                          env=launcher_free, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "t"
    assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == 10
    assert (run_dir / "checkpoints" / "step-000000010" / "deepspeed" / "mp_rank_00_model_states.pt").exists()
    placement = json.loads((run_dir / "ranks" / "rank-00000.json").read_text())
    assert (placement["launcher"], placement["world_size"]) == ("single", 1)


def test_ranks_agree_on_stopping_only_at_checks_not_every_step(digits_dataset, tmp_path, monkeypatch):
    """No collective (and no device-to-host copy) per step: a signal is acted on at the next check. Steps of
    the digits' ResNet-8 take a fraction of a second, so checks are `check_every_steps` apart (after the first,
    at the first step of each start)."""
    checks = []
    agree = dist.max_over_ranks
    monkeypatch.setattr(dist, "max_over_ranks", lambda values: checks.append(values) or agree(values))
    # W&B off: in-process training counts collectives; a W&B service would be a child of the test process itself.
    cfg = load_config(DEMO_CONFIG, small_run(digits_dataset, tmp_path, "logging.wandb_mode=disabled",
                                             "checkpoint.check_every_steps=10", "checkpoint.check_every_seconds=60",
                                             "data.num_threads=1"))
    marker = tmp_path / "t" / "checkpoints" / "step-000000008" / "COMPLETE"

    def signal_after_first_checkpoint():
        while not marker.exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=signal_after_first_checkpoint, daemon=True).start()
    result = train_in_process(cfg)
    assert isinstance(result, Interrupted) and result.step % 10 == 1, result  # at a check, not after the signal
    assert len(checks) == 1 + result.step // 10
    assert (tmp_path / "t" / "checkpoints" / f"step-{result.step:09d}" / "COMPLETE").exists()
    first_check = len(checks)
    resumed = train_in_process(cfg)
    # From the resumed step, a check after its first step, then one each ten steps, none between, to step 40.
    assert isinstance(resumed, Finished) and resumed.step == 40
    assert len(checks) - first_check == 1 + (40 - result.step - 1) // 10

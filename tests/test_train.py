"""Training for real: several processes over gloo, DALI reading data_prep's shards, both engines."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from pipeline import dist
from pipeline.config import load_config
from pipeline.evaluate import evaluate_run
from pipeline.metrics import read_metrics
from pipeline.train import train as train_in_process
from pipeline.wandb_offline import offline_runs
from tests.train_support import DEMO_CONFIG, REPO, env, final_weights, small_run, train, train_and_kill

pytestmark = pytest.mark.slow


def test_ddp_learns_the_digits_under_5_percent(digits_dataset, tmp_path):
    out = train(2, [f"data.root={digits_dataset}", f"run.out_dir={tmp_path}", "logging.wandb_mode=disabled"])
    run_dir = tmp_path / "digits-resnet14"
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


def test_ddp_kill_and_resume_is_bitwise_identical(digits_dataset, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(2, small_run(digits_dataset, whole, "logging.wandb_mode=offline"))
    overrides = small_run(digits_dataset, broken, "logging.wandb_mode=offline")
    train_and_kill(2, overrides, broken / "t", after_checkpoint=16)  # mid-epoch: 23 steps per epoch
    # A checkpoint whose writing was cut short is skipped in favour of the previous one.
    half = broken / "t" / "checkpoints" / "step-000000039"
    half.mkdir(exist_ok=True)
    (half / "state.pt").write_bytes(b"\0" * 100)
    log = train(2, overrides)
    assert "step-000000039" in log and "did not finish" in log
    assert "resuming" in log

    a, b = final_weights(whole / "t", 40), final_weights(broken / "t", 40)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # W&B, read back from its offline files: one run, steps only going forward, the metrics there.
    # (A SIGKILLed run's offline file may hold nothing: W&B's writer buffers; metrics.jsonl has every step.)
    runs = [r for r in offline_runs(broken / "t") if r.run_id]
    assert len(runs) in (1, 2) and len({r.run_id for r in runs}) == 1
    steps = [row["_step"] for r in runs for row in r.history]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    assert all("loss" in row and "lr" in row for r in runs for row in r.history if "loss" in row)
    assert [m["step"] for m in read_metrics(broken / "t") if "loss" in m] == list(range(2, 41, 2))


def test_deepspeed_resume_continues_the_same_loss_curve(digits_dataset, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    extra = ("engine.name=deepspeed", "logging.wandb_mode=disabled")
    train(2, small_run(digits_dataset, whole, *extra))
    overrides = small_run(digits_dataset, broken, *extra)
    train_and_kill(2, overrides, broken / "t", after_checkpoint=16)
    train(2, overrides)
    curve = lambda d: {m["step"]: m["loss"] for m in read_metrics(d / "t") if "loss" in m}
    whole_curve, resumed = curve(whole), curve(broken)
    assert min(resumed) == 2 and max(resumed) == 40
    for step in range(18, 41, 2):  # the steps after the checkpoint it resumed from
        assert resumed[step] == pytest.approx(whole_curve[step], abs=1e-6), step


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


def test_ranks_agree_on_stopping_only_every_check_every_steps_steps(digits_dataset, tmp_path, monkeypatch):
    """No collective (and no device-to-host copy) per step: a signal is acted on at the next check."""
    checks = []
    agree = dist.any_rank
    monkeypatch.setattr(dist, "any_rank", lambda flags: checks.append(flags) or agree(flags))
    cfg = load_config(DEMO_CONFIG, small_run(digits_dataset, tmp_path, "logging.wandb_mode=disabled",
                                             "checkpoint.check_every_steps=10", "data.num_threads=1"))
    marker = tmp_path / "t" / "checkpoints" / "step-000000008" / "COMPLETE"

    def signal_after_first_checkpoint():
        while not marker.exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=signal_after_first_checkpoint, daemon=True).start()
    result = train_in_process(cfg)
    assert result["interrupted"] and result["step"] % 10 == 0, result  # at a check, not the step after the signal
    assert len(checks) == result["step"] // 10
    assert (tmp_path / "t" / "checkpoints" / f"step-{result['step']:09d}" / "COMPLETE").exists()
    resumed = train_in_process(cfg)
    assert resumed["step"] == 40 and len(checks) == 4  # steps 10..40: one check each ten steps, none between


def test_a_checkpoint_directory_that_cannot_be_written_is_one_clear_error(digits_dataset, tmp_path):
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoint directory should be")
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", DEMO_CONFIG,
                           *small_run(digits_dataset, tmp_path, "logging.wandb_mode=disabled")],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot write checkpoints to {run_dir / 'checkpoints'}: ")

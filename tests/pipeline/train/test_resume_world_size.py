"""Resuming a run under another world size: larger and smaller, DDP and DeepSpeed (matrix cells named).

The data order of an epoch depends on the world size (each rank reads its own part of the shards), so a
run resumed with another number of ranks replays the interrupted epoch from its first step: the global
batch, the schedule by step and the epoch accounting stay those of an uninterrupted run. DeepSpeed with
ZeRO >= 1 splits SGD's momentum per rank and cannot re-split it: that cell is a clear refusal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from launch.submit.local import local_command
from tests.support import DEMO_CONFIG, REPO
from tests.support.training import env, small_run, train, train_and_kill

TOTAL = 70
SAVED_AT = 40  # mid-epoch 1: the digits give 31 steps of 48 per epoch


def _overrides(data: Path, out: Path, *engine: str) -> list:
    # W&B off: these tests are about the data order and optimizer state across world sizes; resumes with W&B
    # offline (the default) are the kill soak's and the SLURM tests'.
    return small_run(data, out, "data.batch_size=48", "data.eval_batch_per_gpu=48",
                     f"schedule.total={TOTAL}", "schedule.milestones=[60]",
                     "logging.wandb_mode=disabled", *engine)


def _records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def killed_runs(digits_dataset, tmp_path_factory):
    """Per engine, a 2-rank run killed after its checkpoint of step SAVED_AT, trained once for the module: each
    test resumes a copy of it."""
    killed: dict[str, Path] = {}

    def killed_run(engine: str) -> Path:
        if engine not in killed:
            out = tmp_path_factory.mktemp(engine)
            train_and_kill(2, _overrides(digits_dataset, out, *ENGINES[engine]), out / "t", after_checkpoint=SAVED_AT)
            killed[engine] = out
        return killed[engine]
    return killed_run


ENGINES = {"ddp": ["engine.name=ddp"], "deepspeed-zero0": ["engine.name=deepspeed", "engine.zero_stage=0"]}


@pytest.mark.parametrize("engine,after", [("ddp", 3), ("ddp", 1), ("deepspeed-zero0", 3)],
                         ids=["ddp-2to3", "ddp-2to1", "deepspeed-zero0-2to3"])
def test_resume_with_another_world_size_replays_the_epoch(killed_runs, digits_dataset, tmp_path, engine, after):
    shutil.copytree(killed_runs(engine), tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "t"
    train(after, _overrides(digits_dataset, tmp_path, *ENGINES[engine]))

    records = _records(run_dir)
    steps_per_epoch = next(r["steps_per_epoch"] for r in records if r.get("event") == "start")
    assert SAVED_AT // steps_per_epoch == 1 and SAVED_AT % steps_per_epoch, "the save must fall mid-epoch 1"
    changed = [i for i, r in enumerate(records) if "world size changed" in r.get("event", "")]
    assert len(changed) == 1 and records[changed[0]]["step"] == steps_per_epoch  # epoch 1 from its start
    assert f"from 2 to {after}" in records[changed[0]]["event"]
    after_resume = [r for r in records[changed[0]:] if "lr" in r]
    # Epoch accounting: every step after the resume is logged with the epoch it belongs to...
    assert after_resume and all(r["epoch"] == (r["step"] - 1) // steps_per_epoch for r in after_resume)
    # ...and the run ends at the schedule's last step in the epoch an uninterrupted run ends in.
    results = json.loads((run_dir / "results.json").read_text())["train"]
    assert (results["step"], results["epoch"]) == (TOTAL, TOTAL // steps_per_epoch)
    # The resumed start trained on `after` ranks (results.json does not say: its start record and ranks/ do): the
    # first start's record says 2, the resumed one's `after`, and each of its ranks recorded that world.
    assert [r["world_size"] for r in records if r.get("event") == "start"] == [2, after]
    placement = [json.loads((run_dir / "ranks" / f"rank-{r:05d}.json").read_text()) for r in range(after)]
    assert [(p["rank"], p["world_size"]) for p in placement] == [(r, after) for r in range(after)]


def test_deepspeed_zero_refuses_another_world_size_and_says_what_to_do(digits_dataset, tmp_path):
    run_dir = tmp_path / "t"
    overrides = _overrides(digits_dataset, tmp_path, "engine.name=deepspeed", "engine.zero_stage=1")
    train_and_kill(2, overrides, run_dir, after_checkpoint=16)
    proc = subprocess.run(local_command(DEMO_CONFIG, overrides, 1), capture_output=True, text=True, cwd=REPO,
                          env=env(), timeout=600)
    assert proc.returncode != 0
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert str(run_dir / "checkpoints") in error and "2 DeepSpeed ranks with ZeRO stage 1" in error
    assert "Resume with 2 processes" in error and "Traceback" not in proc.stderr.split(error)[0][-2000:]


def test_a_batch_another_world_size_cannot_split_is_a_config_error_naming_the_key():
    from pipeline.config import ConfigError
    from pipeline.data.base import local_batch

    assert local_batch(48, 3, "batch_size") == 16
    with pytest.raises(ConfigError, match=r"data.batch_size \(100\) is not divisible by the world size \(3\)"):
        local_batch(100, 3, "batch_size")

"""What a user can cause or fix ends a run with one `error:` line and a documented exit code, on every rank alike.

For real, under `launch local` with W&B offline (what users run): before the first step, a checkpoint directory
that cannot be written (1 rank), a missing shard (2 ranks) and a manifest of an unknown version (1 rank); mid-run
in 2 ranks, a disk that fills up during a save (a small tmpfs) and a checkpoint directory made immutable
(`chattr +i`). Each prints one line naming the path (and the latest complete checkpoint, which stays the
latest), no rank prints a traceback, and once the cause is gone the same command resumes. A start refused before
its first step leaves no new directory behind; a config that changes what a run's checkpoints hold (another net)
is refused before it writes anything, by training and by the launcher alike.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.submit.slurm import prepare_run
from pipeline.checkpoint.store import CheckpointStore
from pipeline.config import ConfigError
from pipeline.dist import exit_codes
from tests.support import DEMO_CONFIG, REPO
from tests.support.ci import skip_or_fail_under_ci
from tests.support.training import env, small_run

pytestmark = pytest.mark.slow


def launch_local(overrides: list[str], log: Path, nproc: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch", "local", DEMO_CONFIG, *overrides, "--nproc", str(nproc)],
                            cwd=REPO, env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def ends_with_one_error(proc: subprocess.Popen, log: Path, code: int) -> str:
    """The run's exit code is `code` and its output holds exactly one error line, and no traceback: that line."""
    assert proc.wait(timeout=600) == code, log.read_text()[-4000:]
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-4000:]
    return errors[0]


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before {path}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path} within 300 s"
        time.sleep(0.02)


def test_what_is_wrong_before_the_first_step_is_one_line(digits_dataset, tmp_path):
    log = tmp_path / "log"
    # A file where the checkpoint directory should be.
    run_dir = tmp_path / "a" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoints").write_text("a file where the checkpoint directory should be")
    error = ends_with_one_error(launch_local(small_run(digits_dataset, tmp_path / "a"), log, nproc=1), log,
                                exit_codes.WRITE)
    assert error.startswith(f"error: cannot write checkpoints to {run_dir / 'checkpoints'}: ")

    # A shard that is gone, then a manifest written by a newer data_prep.
    data = tmp_path / "data"
    shutil.copytree(digits_dataset, data)
    shard = sorted(data.glob("train-*.tar"))[0]
    shard.unlink()
    error = ends_with_one_error(launch_local(small_run(data, tmp_path / "b"), log), log, exit_codes.DATA)
    assert error == f"error: {shard}: shard missing"
    assert not (tmp_path / "b").exists()  # a refused start leaves no new directory behind
    shutil.copy(digits_dataset / shard.name, shard)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    error = ends_with_one_error(launch_local(small_run(data, tmp_path / "b"), log, nproc=1), log, exit_codes.DATA)
    assert error.startswith(f"error: {data / 'manifest.json'}: manifest version 99 is not supported")

    # A net with fewer outputs than the dataset's classes (a CIFAR-100 dataset under a CIFAR-10 config).
    error = ends_with_one_error(launch_local(small_run(digits_dataset, tmp_path / "c", "model.num_classes=5"), log,
                                             nproc=1), log, exit_codes.USAGE)
    assert error == (f"error: model.num_classes (5) is below the 10 classes of {digits_dataset / 'manifest.json'}: "
                     "set model.num_classes=10")
    assert not (tmp_path / "c").exists()

    # A ghost-BN group that does not divide a GPU's batch, into a folder of runs that does not exist yet.
    bad_group = small_run(digits_dataset, tmp_path / "d" / "runs", "model.bn_group_size=5")
    error = ends_with_one_error(launch_local(bad_group, log, nproc=1), log, exit_codes.USAGE)
    assert error.startswith("error: model.bn_group_size (5) does not divide the 64 images per GPU")
    assert not (tmp_path / "d").exists()


def test_a_config_that_changes_what_the_checkpoints_hold_is_refused_before_anything_is_written(digits_dataset,
                                                                                             tmp_path):
    """A finished ResNet-8 run started again as ResNet-14: one line naming the key, its config.yaml as it was. The
    launcher, which writes the config before submitting, refuses it too; a longer schedule still resumes."""
    log = tmp_path / "log"
    overrides = small_run(digits_dataset, tmp_path, "schedule.total=8")
    run_dir = tmp_path / "t"
    assert launch_local(overrides, log, nproc=1).wait(timeout=600) == 0, log.read_text()[-4000:]
    config = (run_dir / "config.yaml").read_bytes()

    error = ends_with_one_error(launch_local([*overrides, "model.name=cifar_resnet14"], log, nproc=1), log,
                                exit_codes.USAGE)
    assert "model.name cifar_resnet8 -> cifar_resnet14" in error and "new run.name" in error, error
    assert (run_dir / "config.yaml").read_bytes() == config
    with pytest.raises(ConfigError, match="model.name cifar_resnet8 -> cifar_resnet14"):
        prepare_run(DEMO_CONFIG, [*overrides, "model.name=cifar_resnet14"])
    assert (run_dir / "config.yaml").read_bytes() == config

    # What does not change the checkpoints' contents may change: the run resumes and trains on.
    proc = launch_local([*overrides, "schedule.total=12"], log, nproc=1)
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    assert f"resuming {run_dir} from step 8" in log.read_text()
    assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == 12


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int):
    """A tmpfs of `megabytes` at `path` (needs the right to mount: root on these machines)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        skip_or_fail_under_ci(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_and_a_read_only_directory_mid_run_are_one_line_and_the_run_resumes(digits_dataset, tmp_path):
    log = tmp_path / "log"
    with small_disk(tmp_path / "disk", 32) as disk:
        overrides = small_run(digits_dataset, disk, "logging.wandb_mode=offline", "schedule.total=120",
                              "schedule.milestones=[100]", "checkpoint.keep_last=2", "checkpoint.check_every_steps=2")
        run_dir = disk / "t"
        checkpoints = CheckpointStore(run_dir / "checkpoints")

        # The disk fills up once the first checkpoint is written: the next save fails on every rank.
        proc = launch_local(overrides, log)
        wait_for_file(run_dir / "checkpoints" / "step-000000008" / "COMPLETE", proc, log)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=1M"], capture_output=True)
        error = ends_with_one_error(proc, log, exit_codes.WRITE)
        latest = checkpoints.latest()
        assert "No space left on device" in error and f"{latest.path} (step {latest.step}), is kept" in error, error
        assert not list(checkpoints.root.glob("*.tmp"))  # what was written of the failed save is given back

        # Space freed: the same command resumes there. Then the checkpoint directory is made immutable mid-run.
        (disk / "filler").unlink()
        proc = launch_local(overrides, log)
        after = latest.step + 8
        wait_for_file(run_dir / "checkpoints" / f"step-{after:09d}" / "COMPLETE", proc, log)
        subprocess.run(["chattr", "+i", str(checkpoints.root)], check=True)
        try:
            error = ends_with_one_error(proc, log, exit_codes.WRITE)
        finally:
            subprocess.run(["chattr", "-i", str(checkpoints.root)], check=True)
        assert f"resuming {run_dir} from step {latest.step}" in log.read_text()
        latest = checkpoints.latest()
        assert latest.step >= after and "Operation not permitted" in error and f"(step {latest.step}), is kept" in error

        # Fixed: the same command resumes and finishes.
        proc = launch_local(overrides, log)
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
        assert f"from step {latest.step}" in log.read_text()
        assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == 120

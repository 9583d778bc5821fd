"""Progress where the work is long: training records carry the run's elapsed time and ETA (across a resume),
the console shows them as durations, and an evaluation shows its progress on the primary rank's stderr."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
import torch

from launch.submit.local import torchrun_command
from pipeline.evaluate.progress import EvalProgress
from pipeline.run.logger import read_metrics
from tests.support import REPO
from tests.support.training import env, small_run, train, train_and_kill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resumed_run(digits_dataset, tmp_path_factory):
    """A 40-step run killed after its checkpoint of step 16 and resumed to the end (one process)."""
    out = tmp_path_factory.mktemp("progress")
    # W&B off: this is about the elapsed time kept in checkpoints; kills with W&B offline are the kill soak's.
    overrides = small_run(digits_dataset, out, "logging.wandb_mode=disabled", "data.eval_batch_per_gpu=20")
    train_and_kill(1, overrides, out / "t", after_checkpoint=16)
    log = train(1, overrides)
    return out / "t", log


def test_training_records_carry_elapsed_time_and_eta_across_a_resume(resumed_run):
    run_dir, log = resumed_run
    records = [m for m in read_metrics(run_dir) if "loss" in m]
    assert [m["step"] for m in records] == list(range(2, 41, 2))
    elapsed = [m["elapsed_s"] for m in records]
    etas = [m["eta_s"] for m in records]
    assert all(isinstance(v, float) for v in elapsed + etas)  # numbers in metrics.jsonl, not strings
    # The resumed start continued the clock of the checkpoint of step 16: never back to zero.
    assert elapsed == sorted(elapsed) and elapsed[0] > 0, elapsed
    saved = torch.load(run_dir / "checkpoints" / "step-000000016" / "state.pt", weights_only=True)
    assert 0 < saved["progress"]["elapsed_s"] <= elapsed[8]  # step 18, the first record after the resume
    assert all(eta > 0 for eta in etas[:-1]) and etas[-1] == 0.0
    # The console shows durations: "... elapsed 3s eta 12s".
    assert re.search(r"step=18 .*elapsed \d+[smhd]\S* eta \d+[smhd]", log), log[-3000:]
    assert "resuming" in log


def test_an_older_checkpoint_without_elapsed_time_still_loads():
    from pipeline.train.progress import Progress

    assert Progress(**{"step": 16, "epoch": 0}) == Progress(16, 0, 0.0)


def test_evaluation_progress_lines_in_a_log_file(resumed_run):
    """Not a terminal (a SLURM log): lines with batches done, images/s and ETA, from the primary rank only."""
    run_dir, _ = resumed_run
    proc = subprocess.run(torchrun_command("pipeline.evaluate", [str(run_dir)], 2), capture_output=True, text=True,
                          cwd=REPO, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "evaluating center test:" in ln]
    # 297 test digits: 148 on the primary rank, batches of 20 per GPU: 8 batches, a line each.
    assert len(lines) == 8, proc.stderr[-3000:]
    assert re.search(r"evaluating center test: 1/8 batches \(12%\), \d+ img/s, eta \d+s$", lines[0]), lines[0]
    assert re.search(r"evaluating center test: 8/8 batches \(100%\), \d+ img/s$", lines[-1]), lines[-1]
    assert "\r" not in proc.stderr  # no bar drawn into a file


def test_evaluation_progress_bar_on_a_terminal(resumed_run):
    run_dir, _ = resumed_run
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 wide
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.evaluate", str(run_dir)], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert proc.wait(timeout=300) == 0, shown.decode(errors="replace")[-3000:]
    text = shown.decode(errors="replace")
    # One rank: 297 digits in batches of 20.
    assert "evaluating center test: 100%" in text and "15/15" in text and "img/s" in text, text[-2000:]
    assert "batches (" not in text  # the bar, not the log lines


def test_few_images_a_second_keep_their_decimals():
    stream = io.StringIO()
    progress = EvalProgress(4, stream=stream, every_batches=1)
    progress.start -= 20  # one image in 20 s: multi-scale testing's pace, one whole image at a time, on a CPU
    progress(1)
    assert "evaluation: 1/4 batches (25%), 0.05 img/s, eta " in stream.getvalue()

"""A stop signal at the start of the final evaluation, on one rank only: every rank saves and stops (exit 3), none
hangs. The rank that saw the signal leaves the evaluation's loop before its first batch; what every rank must do
together (BN buffers' broadcasts) is done before that loop, so the others meet it at the evaluation's one reduction.
"""

import json
import subprocess

import pytest

from launch.submit.local import torchrun_command
from pipeline.dist.exit_codes import INTERRUPTED
from pipeline.run.logger import read_metrics
from tests.support import DEMO_CONFIG, REPO
from tests.support.training import env, small_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_a_signal_on_one_rank_before_its_first_final_evaluation_batch_saves_and_stops_every_rank(
        digits_dataset, tmp_path, engine):
    # engine.hang_timeout_minutes=1 (default 10): were the ranks' collectives split, the job would end in a minute
    # (exit 8) rather than in ten; the assertion is the same. W&B offline, as users run.
    overrides = small_run(digits_dataset, tmp_path, "schedule.total=10", "schedule.milestones=[]",
                          f"engine.name={engine}", "engine.hang_timeout_minutes=1", "logging.wandb_mode=offline")
    proc = subprocess.run(torchrun_command("tests.workers.signal_at_final_evaluation", [DEMO_CONFIG, *overrides], 2),
                          capture_output=True, text=True, cwd=REPO, env=env(), timeout=600)
    # torchrun itself exits 1 once a rank has ended non-zero; the ranks' own exit code is the stop's.
    assert proc.returncode != 0 and f"(exitcode: {INTERRUPTED})" in proc.stderr, proc.stderr[-4000:]
    assert "exitcode: 8" not in proc.stderr and "RankHung" not in proc.stderr
    run_dir = tmp_path / "t"
    stops = [m for m in read_metrics(run_dir) if str(m.get("event", "")).startswith("stopped by")]
    assert [(m["event"], m["step"]) for m in stops] == [
        ("stopped by a signal on another rank during the final evaluation", 10)], stops  # said by rank 0
    assert json.loads((run_dir / "checkpoints" / "step-000000010" / "COMPLETE").read_text())["step"] == 10
    assert not (run_dir / "results.json").exists()

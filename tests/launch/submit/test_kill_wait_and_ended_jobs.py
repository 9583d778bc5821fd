"""What SLURM says of a job that left its queue, read from its log where SLURM no longer remembers it, and the
warning for a stop that would not fit in the cluster's KillWait. (On the real minicluster: test_slurm.py.)"""

import json

import pytest

from launch.submit.ended_jobs import state_in_log
from launch.submit.kill_wait import stop_seconds, stop_warnings
from launch.submit.run_status import run_status
from pipeline.config import load_config
from tests.support import DEMO_CONFIG


@pytest.mark.parametrize(("line", "state"), [
    ("slurmstepd: error: *** JOB 41 ON n1 CANCELLED AT 2026-12-07T06:01:02 ***", "CANCELLED"),
    ("slurmstepd: error: *** STEP 41.0 ON n1 CANCELLED AT 2026-12-07T06:01:02 ***", "CANCELLED"),
    ("slurmstepd: error: *** JOB 41 ON n1 CANCELLED AT 2026-12-07T06:01:02 DUE TO TIME LIMIT ***", "TIMEOUT"),
    ("slurmstepd: error: *** JOB 41 ON n1 CANCELLED AT 2026-12-07T06:01:02 DUE TO PREEMPTION ***", "PREEMPTED"),
    ("slurmstepd: error: *** JOB 41 ON n1 CANCELLED AT 2026-12-07T06:01:02 DUE TO NODE FAILURE ***", "NODE_FAIL"),
    ("error: data.root: no manifest", None),
])
def test_slurms_own_line_in_a_jobs_log_says_how_it_ended(tmp_path, line, state):
    log = tmp_path / "41_0_log.err"
    log.write_text(f"received SIGTERM: checkpointing at the next step\n{line}\n")
    assert state_in_log(log) == state


def _submitted_run(tmp_path, log_line: str | None, logged: bool = True):
    """A run directory whose job (id 987654321, unknown to any SLURM) has left the queue."""
    run_dir = tmp_path / "t"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    (run_dir / "slurm_job_id").write_text("987654321\n")
    records = [{"step": 10, "loss": 1.0}, {"step": 12, "loss": 0.9}]
    if logged:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if log_line is not None:
        (run_dir / "slurm" / "987654321_0_log.err").write_text(log_line + "\n")
    return run_dir


def test_a_cancelled_job_is_cancelled_and_counts_its_saved_steps(tmp_path):
    cancelled = "slurmstepd: error: *** JOB 987654321 ON n1 CANCELLED AT 2026-12-07T06:01:02 ***"
    run_dir = _submitted_run(tmp_path, cancelled)
    status = run_status(run_dir)
    assert (status.state, status.step, status.error) == ("cancelled", 0, None)  # 12 steps logged, none saved


def test_a_failed_job_is_failed_with_its_error_line(tmp_path):
    run_dir = _submitted_run(tmp_path, "error: data.root: no manifest")
    status = run_status(run_dir)
    assert (status.state, status.error) == ("failed", "error: data.root: no manifest")


def test_a_job_that_left_no_log_and_no_record_is_not_called_failed(tmp_path):
    """Cancelled while it waited, where SLURM has forgotten it (no accounting, past MinJobAge)."""
    status = run_status(_submitted_run(tmp_path, None, logged=False))
    assert status.state == "not started" and "left the queue without a log" in status.reason
    assert run_status(_submitted_run(tmp_path / "ran", None)).state == "failed"  # it ran; nothing says how it ended


def test_a_stop_that_would_outlast_kill_wait_is_warned_of_measured_or_planned(tmp_path):
    cfg = load_config("configs/imagenet/resnet152.yaml", [f"run.out_dir={tmp_path}", "run.name=r"])
    seconds, how = stop_seconds(cfg)
    # 60.2 M parameters x 8 bytes at 200 MB/s, after a check at most 2 s away.
    assert seconds == pytest.approx(2 + 60.19e6 * 8 / 200e6, rel=0.01) and how.startswith("planned")
    assert stop_warnings([cfg], kill_wait_s=30) == []
    [warning] = stop_warnings([cfg], kill_wait_s=4)
    assert "KillWait of 4 s" in warning and "checkpoint.check_every_seconds" in warning
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    stops = [{"step": 5, "event": "stopped by SIGTERM", "save_s": 20.0, "stop_s": 41.5},
             {"step": 9, "event": "stopped by SIGTERM", "save_s": 2.0, "stop_s": 3.0}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stops))
    [warning] = stop_warnings([cfg], kill_wait_s=30)
    assert "takes 42 s (the longest of its 2 stops so far)" in warning, warning


def test_the_demo_config_stops_well_inside_slurms_default_kill_wait():
    assert stop_warnings([load_config(DEMO_CONFIG)], kill_wait_s=30) == []

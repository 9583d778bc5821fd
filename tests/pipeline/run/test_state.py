"""A run's state from its files (`pipeline.run.state`), SLURM's word on it (`launch.reproduce.status`), and
`python -m launch status` on runs and on a table config: run directories written by the project's own writers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.reproduce.status import print_status
from launch.submit.run_status import run_status
from launch.submit.slurm import prepare_planned_run
from pipeline.checkpoint.store import CheckpointStore
from pipeline.config.schema import LoggingConfig
from pipeline.run.layout import RunDir
from pipeline.run.logger import format_duration, make_logger
from pipeline.run.results import update_results
from pipeline.run.state import ACTIVE_WINDOW_S, read_run_state
from pipeline.tables.spec import planned_runs
from tests.support import REPO
from tests.support.report_runs import TOTAL_STEPS, write_run
from tests.support.slurm import require_minicluster

UNKNOWN_JOB = "999999999"  # no SLURM queue knows it: a job that left the queue


def _log(run_dir: Path, records: list, resume_step: int = 0) -> None:
    """Append training records [(step, {...})] to the run's metrics.jsonl, as `pipeline.train` logs them."""
    logger = make_logger(True, run_dir, LoggingConfig(wandb_mode="disabled"), "t", {}, resume_step)
    for step, record in records:
        logger.log(record, step, console=False)
    logger.close()


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _checkpoint(run_dir: Path, step: int) -> None:
    store = CheckpointStore(run_dir / "checkpoints")
    staging = store.begin(step)
    (staging / "state.pt").write_bytes(b"weights")
    store.commit(staging, step)


def test_the_files_tell_each_state(tmp_path):
    start = (0, {"event": "start", "total_steps": 100})
    assert read_run_state(tmp_path / "nowhere").state == "not started"
    (tmp_path / "empty").mkdir()
    assert read_run_state(tmp_path / "empty").state == "not started"

    running = tmp_path / "running"
    _log(running, [start, (40, {"loss": 1.5, "lr": 0.1, "elapsed_s": 80.0, "eta_s": 1000.0})])
    _age(RunDir(running).metrics, 100)  # the estimate was made 100 s ago
    state = read_run_state(running)
    assert (state.state, state.step, state.total_steps, state.progress, state.job_id) == ("running", 40, 100, 0.4,
                                                                                         None)
    assert state.elapsed_s == 80.0 and 895 <= state.eta_s <= 900 and state.last_metrics["loss"] == 1.5

    stopped = tmp_path / "stopped"
    _log(stopped, [start, (40, {"loss": 1.5})])
    _age(RunDir(stopped).metrics, ACTIVE_WINDOW_S + 5)
    assert (read_run_state(stopped).state, read_run_state(stopped).step) == ("stopped", 0)  # 40 logged, none saved
    only_checkpoint = tmp_path / "only-checkpoint"
    _checkpoint(only_checkpoint, 60)
    state = read_run_state(only_checkpoint)
    assert (state.state, state.step, state.checkpoint_step) == ("stopped", 60, 60)

    # A SLURM job id, not finished: the files alone cannot tell queued from running from failed.
    submitted = tmp_path / "submitted"
    _log(submitted, [start, (40, {"loss": 1.5})])  # fresh: it would be "running" without the job id
    RunDir(submitted).slurm_job_id.write_text("1234_5\n")
    state = read_run_state(submitted)
    assert (state.state, state.job_id, state.step) == ("submitted", "1234_5", 40)

    update_results(submitted, "train", {"step": 100, "protocol": "center", "top1_error": 9.0})
    state = read_run_state(submitted)
    assert (state.state, state.eta_s) == ("finished", None)


def test_a_run_that_has_not_logged_yet_says_when_it_will(tmp_path, capsys):
    """Training records come every `logging.every_steps` steps: before the first, `status` says so rather than
    showing a bare 0%."""
    run_dir = tmp_path / "r"
    _log(run_dir, [(0, {"event": "start", "total_steps": 100})])  # fresh: running
    RunDir(run_dir).config.write_text("logging:\n  every_steps: 50\n")
    assert print_status([str(run_dir)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(run_dir)))
    assert row.split()[1:3] == ["running", "0/100"] and row.endswith("starting=first training record at step 50")


@pytest.mark.slurm
def test_launch_status_resolves_a_submitted_run_with_the_queue(tmp_path):
    require_minicluster()  # SLURM's own answer for a job it does not know
    submitted = tmp_path / "r"
    _log(submitted, [(0, {"event": "start", "total_steps": 100})])
    RunDir(submitted).slurm_job_id.write_text(UNKNOWN_JOB)
    assert read_run_state(submitted).state == "submitted"
    status = run_status(submitted)
    assert (status.state, status.job_id, status.step, status.total_steps, status.progress) == (
        "failed", UNKNOWN_JOB, 0, 100, 0.0)  # left the queue without finishing
    _checkpoint(tmp_path / "plain", 10)  # no job id: SLURM is not asked, the files' state stands
    _age(tmp_path / "plain", ACTIVE_WINDOW_S + 5)
    assert run_status(tmp_path / "plain").state == "stopped"


def test_a_queue_that_does_not_answer_is_an_error_not_a_failed_run(tmp_path, monkeypatch, capsys):
    """A controller that times out must not make a submitted run look failed (`reproduce` would submit it again):
    asked again, then one error line. squeue here is a script that fails as a busy controller's does (the
    minicluster's own controller cannot be made to time out without stopping it for the other tests)."""
    from launch.cli import main as launch_main
    from launch.submit import queue

    run_dir = tmp_path / "r"
    _log(run_dir, [(0, {"event": "start", "total_steps": 100})])
    (run_dir / "config.yaml").write_text("{}\n")
    RunDir(run_dir).slurm_job_id.write_text("4242_1")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"""#!/bin/sh
echo x >> {calls}
if [ "$(wc -l < {calls})" -le "$FAILURES" ]; then
    echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1
fi
echo "4242_1|PENDING|ReqNodeNotAvail, UnavailableNodes:n1"
""")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(queue, "RETRY_S", 0.0)

    monkeypatch.setenv("FAILURES", "2")  # a controller busy for a moment: asked again, answered
    status = run_status(run_dir)
    assert (status.state, status.reason) == ("queued", "ReqNodeNotAvail, UnavailableNodes:n1")
    assert calls.read_text().count("x") == 3

    calls.unlink()
    monkeypatch.setenv("FAILURES", "99")  # one that stays silent: `status` says so and decides nothing
    assert launch_main(["status", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    assert "failed" not in out and calls.read_text().count("x") == queue.ATTEMPTS
    assert err.startswith("error: SLURM's queue did not answer") and "Socket timed out" in err, err


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (None, 0.4, 42, 187, 3720, 11400, 2 * 86400 + 3 * 3600)] == [
        "-", "0s", "42s", "3m07s", "1h02m", "3h10m", "2d03h"]


def _table(tmp_path: Path) -> Path:
    """A two-row table of short runs (1000 steps, as the fixtures write them): 2 + 3 runs."""
    table = tmp_path / "t.yaml"
    overrides = f"[schedule.total={TOTAL_STEPS}, 'schedule.milestones=[500,750]']"
    table.write_text(
        "title: Short CIFAR runs\nmetrics: [top1_error]\nprotocol: center\nrows:\n"
        f"  - {{label: ResNet-20, config: {REPO}/configs/cifar10/resnet20.yaml, overrides: {overrides}, "
        "seeds: [0, 1]}\n"
        f"  - {{label: ResNet-56, config: {REPO}/configs/cifar10/resnet56.yaml, overrides: {overrides}, "
        "seeds: [0, 1, 2]}\n")
    return table


@pytest.mark.slurm
def test_launch_status_on_a_table_shows_its_runs_and_overall_progress(tmp_path):
    require_minicluster()  # SLURM's own answer for a job it does not know
    table, runs_dir = _table(tmp_path), tmp_path / "runs"
    runs = {(r.label, r.seed): r for r in planned_runs(table, runs_dir)}
    write_run(runs[("ResNet-20", 0)], final_error=8.0)  # finished and evaluated (centre view: training's own)
    running = runs[("ResNet-20", 1)]
    write_run(running, steps=500, active=True)
    _log(running.run_dir, [(510, {"loss": 0.5, "elapsed_s": 3000.0, "eta_s": 2 * 3600.0})], resume_step=500)
    write_run(runs[("ResNet-56", 0)], steps=300)  # stopped an hour ago, its last checkpoint at step 200
    _checkpoint(runs[("ResNet-56", 0)].run_dir, 200)
    submitted = prepare_planned_run(runs[("ResNet-56", 1)])  # submitted, never started: config and job id
    RunDir(submitted).slurm_job_id.write_text(UNKNOWN_JOB)
    # ResNet-56 seed 2: no run directory at all.

    proc = subprocess.run([sys.executable, "-m", "launch", "status", str(table), "--runs", str(runs_dir)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def line(label: str, seed: int) -> str:
        return next(ln for ln in lines if f"({label}, seed {seed})" in ln)

    assert lines[0] == f"{table}: Short CIFAR runs"
    assert re.search(r"finished\s+1000/1000\s+100%", line("ResNet-20", 0))
    assert re.search(r"running\s+510/1000\s+51%\s+50m00s\s+(1h59m|2h00m)\s+-\s+loss=0.5", line("ResNet-20", 1))
    # A run that is not running counts the steps it saved: 300 logged, 200 saved.
    assert re.search(r"stopped\s+200/1000\s+20%\s+-\s+-\s+-\s+loss=", line("ResNet-56", 0))
    # Submitted, left the queue without ever running (no log, no record): not a failure.
    assert re.search(rf"not started \(job {UNKNOWN_JOB} left the queue without a log\)\s+0\s+-\s+-\s+-\s+"
                     rf"{UNKNOWN_JOB}", line("ResNet-56", 1))
    assert re.search(r"not started\s+0\s+-", line("ResNet-56", 2))
    assert str(runs_dir / "cifar10-resnet56-seed2") in line("ResNet-56", 2)
    # 1000 + 510 + 200 + 0 + 0 of 5 x 1000 steps; the one running run's ETA.
    assert re.fullmatch(r"t.yaml: 1/5 runs finished, 1/5 evaluated \(center\), 34% of all steps, "
                        r"longest ETA (1h59m|2h00m)", lines[-1]), lines[-1]


def test_launch_status_on_run_folders(tmp_path):
    table, runs_dir = _table(tmp_path), tmp_path / "runs"
    runs = {(r.label, r.seed): r for r in planned_runs(table, runs_dir)}
    write_run(runs[("ResNet-20", 0)])
    write_run(runs[("ResNet-56", 0)], steps=300)
    proc = subprocess.run([sys.executable, "-m", "launch", "status", str(runs_dir)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["run", "state", "step", "%", "elapsed", "eta", "job", "last", "metrics"]
    assert [row.split()[1] for row in rows if not row.startswith(" ")] == ["finished", "stopped"]
    assert rows[-1].strip() == "nothing saved: started again, it starts from step 0"  # 300 steps logged, none saved
    proc = subprocess.run([sys.executable, "-m", "launch", "status", str(tmp_path / "nothing")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "no runs found" in proc.stdout

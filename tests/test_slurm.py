"""launch on a real one-machine SLURM cluster: submit, preemption (USR2), time-outs, sweeps, data_prep arrays.

Jobs run for real through submitit's sbatch/srun. One thing is sped up: after a requeue SLURM holds a job
for about 100 s before it may start again (its begin time); the tests release it at once with
`scontrol update starttime=now`, which changes when it runs, not what it does.
"""

import filecmp
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.status import run_status
from pipeline.metrics import read_metrics
from pipeline.wandb_offline import offline_runs
from tests.slurm_support import require_minicluster
from tests.train_support import DEMO_CONFIG, REPO, small_run, train

pytestmark = pytest.mark.slow
CPU_JOB = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1"]


def launch(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def queue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.split()[0] if out.split() else ""


def wait_finished(run_dirs, timeout: float = 400) -> None:
    """Wait until every run has results; release requeued jobs from SLURM's begin-time hold."""
    deadline = time.time() + timeout
    pending = list(run_dirs)
    while pending:
        for run_dir in list(pending):
            status = run_status(run_dir)
            if status.state == "finished":
                pending.remove(run_dir)
            elif status.state == "failed":
                pytest.fail(f"{run_dir} failed:\n" + _logs(run_dir))
            elif status.job_id and queue_state(status.job_id) == "PENDING":
                subprocess.run(["scontrol", "update", f"jobid={status.job_id}", "starttime=now"], capture_output=True)
        if time.time() > deadline:
            pytest.fail(f"not finished in {timeout}s: {pending}\n" + "".join(_logs(d) for d in pending))
        time.sleep(1)


def _logs(run_dir: Path) -> str:
    logs = sorted(Path(run_dir).glob("slurm/*_log.*")) + sorted(Path(run_dir).parent.glob("_sweeps/*/*_log.*"))
    return "".join(f"--- {p}\n{p.read_text()[-2500:]}\n" for p in logs)


def submit(run_dir: Path, overrides, *flags: str) -> str:
    launch("submit", DEMO_CONFIG, *overrides, *CPU_JOB, *flags)
    return (run_dir / "slurm_job_id").read_text().strip()


def test_submitted_job_signalled_mid_run_requeues_and_resumes(digits_dataset, tmp_path):
    require_minicluster()
    run_dir = tmp_path / "t"
    overrides = small_run(digits_dataset, tmp_path, "schedule.total=120", "schedule.milestones=[100]",
                          "logging.wandb_mode=offline")
    job = submit(run_dir, overrides, "--time", "10")
    marker = run_dir / "checkpoints" / "step-000000016" / "COMPLETE"
    deadline = time.time() + 180
    while not marker.exists():
        assert time.time() < deadline, "no checkpoint in time:\n" + _logs(run_dir)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_finished([run_dir])

    results = json.loads((run_dir / "results.json").read_text())["train"]
    assert results["step"] == 120  # exact: not one step more or less
    metrics = read_metrics(run_dir)
    stopped = [m for m in metrics if "stopped by SIGUSR2" in str(m.get("event"))]
    assert len(stopped) == 1 and stopped[0]["step"] >= 16  # saved where it was, not from zero
    log = _logs(run_dir)
    assert f"resuming {run_dir} from step {stopped[0]['step']}" in log
    assert [m["step"] for m in metrics if "loss" in m] == list(range(2, 121, 2))
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1  # one W&B run across the requeue
    assert list((run_dir / "checkpoints").glob("*/COMPLETE"))


def test_job_with_too_short_time_limit_times_out_requeues_and_finishes(digits_dataset, tmp_path):
    require_minicluster()
    run_dir = tmp_path / "t"
    # SLURM's limit is whole minutes: 1 minute, with USR2 40 s before it, leaves ~20 s of work per allocation.
    overrides = small_run(digits_dataset, tmp_path, "schedule.total=400", "schedule.milestones=[300]",
                          "logging.every_steps=10", "checkpoint.every_steps=50", "logging.wandb_mode=disabled")
    submit(run_dir, overrides, "--time", "1", "--signal-delay-s", "40", "--max-requeues", "10")
    wait_finished([run_dir], timeout=600)
    assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == 400
    stops = [m for m in read_metrics(run_dir) if "stopped by" in str(m.get("event"))]
    assert stops, "the job finished without ever reaching its time limit: make its work longer"


def test_sweep_runs_as_one_job_array_and_skips_finished_runs(digits_dataset, tmp_path):
    require_minicluster()
    table = tmp_path / "tiny.yaml"
    rows = "\n".join(f"  - {{label: {name}, config: {DEMO_CONFIG}, overrides: [model.name={name}, run.name={name}]}}"
                     for name in ("cifar_resnet8", "cifar_plain8", "cifar_resnet14"))
    table.write_text(f"title: tiny\nkind: table\nmetrics: [top1_error]\nrows:\n{rows}\n")
    common = [f"data.root={digits_dataset}", "schedule.unit=iteration", "schedule.total=10", "schedule.milestones=[]",
              "eval.every_epochs=0", "logging.wandb_mode=disabled", "logging.every_steps=5"]
    out = launch("sweep", str(table), *common, "--runs", str(tmp_path / "runs"), "--gpus-per-node", "0",
                 "--tasks-per-node", "1", "--cpus-per-task", "1", "--array-parallelism", "2")
    assert "job array" in out and "3 tasks" in out
    run_dirs = sorted(d for d in (tmp_path / "runs").iterdir() if (d / "config.yaml").exists())
    assert [d.name for d in run_dirs] == ["cifar_plain8-seed0", "cifar_resnet14-seed0", "cifar_resnet8-seed0"]
    job_ids = {(d / "slurm_job_id").read_text().split("_")[0] for d in run_dirs}
    assert len(job_ids) == 1  # one array
    wait_finished(run_dirs)
    again = launch("sweep", str(table), *common, "--runs", str(tmp_path / "runs"), "--gpus-per-node", "0",
                   "--tasks-per-node", "1", "--cpus-per-task", "1")
    assert "nothing to submit" in again and again.count("skip") == 3


def test_data_prep_job_array_gives_the_same_shards(digits_dataset, tmp_path):
    require_minicluster()
    src = digits_dataset.parent / "raw" / "cifar-10-batches-py"
    one, array = tmp_path / "one", tmp_path / "array"
    subprocess.run([sys.executable, "-m", "data_prep", "cifar10", "--src", str(src), "--out", str(one),
                    "--samples-per-shard", "200", "--no-progress"], check=True, capture_output=True)
    launch("prep", "--num-tasks", "3", "--cpus-per-task", "1", "--wait", "--",
           "cifar10", "--src", str(src), "--out", str(array), "--samples-per-shard", "200")
    files = sorted(p.name for p in one.iterdir() if p.suffix in (".tar", ".idx") or p.name == "manifest.json")
    assert len(files) > 5
    match, mismatch, errors = filecmp.cmpfiles(one, array, files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def test_evaluation_runs_as_a_two_task_slurm_job(digits_dataset, tmp_path):
    require_minicluster()
    run_dir = tmp_path / "t"
    train(1, small_run(digits_dataset, tmp_path, "schedule.total=10", "schedule.milestones=[]",
                       "logging.wandb_mode=disabled"))
    out = launch("evaluate", str(run_dir), "--slurm", "--wait", "--layer-responses", *CPU_JOB, "--time", "5")
    assert "submitted evaluation job" in out and "297 samples" in out
    results = json.loads((run_dir / "results.json").read_text())
    evaluated = results["eval"]["center"]
    assert evaluated["world_size"] == 2 and evaluated["samples"] == 297  # each test digit once over 2 tasks
    assert evaluated["top1_error"] == results["train"]["top1_error"]
    assert (run_dir / "layer_responses.json").exists()

"""launch on the real minicluster, one-node jobs: time-outs, sweeps, data_prep arrays, evaluation jobs.

Jobs run for real through submitit's sbatch/srun. Preemption (USR2) mid-run and during the final
evaluation is tested on 2-node jobs in `test_slurm_multinode.py`.
"""

import filecmp
import json
import os
import subprocess
import sys

import pytest

from launch.submit.kill_wait import read_kill_wait
from pipeline.run.logger import read_metrics
from tests.support import DEMO_CONFIG, TESTS
from tests.support.commands import launch_here
from tests.support.slurm import (
    job_logs,
    job_state,
    launch,
    queue_state,
    require_minicluster,
    submit,
    wait_finished,
    wait_for,
)
from tests.support.training import small_run, train
from tests.support.wandb_offline import offline_runs

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
CPU_JOB = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1"]
SLOW_STEPS = TESTS / "workers" / "slow_steps"


def test_job_with_too_short_time_limit_times_out_requeues_and_finishes(digits_dataset, tmp_path):
    require_minicluster()
    run_dir = tmp_path / "t"
    # SLURM's limit is whole minutes: 1 minute, with USR2 15 s (or, SLURM's timers being coarse, up to
    # ~30 s) before it. The first allocation's steps take over 1 s each (a sleep before each backward,
    # `tests/workers/slow_steps`), so its 120 steps outlast the limit twice over however fast the machine is;
    # requeued (SLURM_RESTART_COUNT 1), the job trains at full speed. Once the first allocation has run out of
    # time, the test raises the job's limit, so the requeued job finishes however slow the machine is: the
    # test waits on events, not on a number of allocations.
    overrides = small_run(digits_dataset, tmp_path, "schedule.total=120", "schedule.milestones=[100]",
                          "logging.every_steps=10", "checkpoint.every_steps=20", "checkpoint.check_every_steps=2",
                          "logging.wandb_mode=offline")
    slow_first_allocation = {"SLOW_STEP_S": "1", "SLOW_UNTIL_REQUEUED": "1",
                             "PYTHONPATH": f"{SLOW_STEPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    job = submit(run_dir, overrides, *CPU_JOB, "--time", "1", "--signal-delay-s", "15", "--max-requeues", "5",
                 env=slow_first_allocation)
    timed_out = lambda: any(m.get("event") == "stopped by SIGUSR2" for m in read_metrics(run_dir))
    wait_for(timed_out, "stop at the time limit", run_dir, timeout=600)
    subprocess.run(["scontrol", "update", f"jobid={job}", "timelimit=30"], check=True)
    wait_finished([run_dir], timeout=1500)
    assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == 120
    stop = next(m["step"] for m in read_metrics(run_dir) if m.get("event") == "stopped by SIGUSR2")
    assert 0 < stop < 120 and f"resuming {run_dir} from step {stop}" in job_logs(run_dir)


def test_sigterm_to_every_process_and_scancel_each_save_and_the_run_resumes(digits_dataset, tmp_path):
    """SLURM's SIGTERM reaches every process of the job step, W&B's service among them (W&B offline, as users run):
    `scancel --signal=TERM` (what a preemption sends) and `scancel` each end with a checkpoint at the signalled
    step; neither job requeues itself (a cancelled job stays cancelled), and submitting the run again resumes.

    The signalled starts' steps take 1.5 s (a sleep before each backward, `tests/workers/slow_steps`): with the
    default `checkpoint.check_every_steps` (10), a check every 10 steps would come up to 15 s after the signal,
    past the minicluster's KillWait (10 s) and SLURM's SIGKILL. Checks follow the step time instead
    (`checkpoint.check_every_seconds`). `launch status` then says what SLURM says: stopped (the job ended
    itself, COMPLETED) and cancelled, each with the step it resumes from."""
    require_minicluster()
    assert read_kill_wait() == 10  # the minicluster's, what this test is about
    run_dir = tmp_path / "t"
    # A checkpoint at step 11 (then 22, ...): a signal right after it has 9 slow steps to go to step 20, where
    # checks every 10 steps would come; each start stops (and resumes) at the step its check takes the signal.
    overrides = small_run(digits_dataset, tmp_path, "schedule.total=160", "schedule.milestones=[150]",
                          "checkpoint.every_steps=11", "logging.wandb_mode=offline")
    slow = {"SLOW_STEP_S": "1.5", "PYTHONPATH": f"{SLOW_STEPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    stops = lambda: [m for m in read_metrics(run_dir) if m.get("event") == "stopped by SIGTERM"]
    for k, (how, final_state, said) in enumerate(((["--signal=TERM"], "COMPLETED", "stopped"),
                                                   ([], "CANCELLED", "cancelled"))):
        job = submit(run_dir, overrides, *CPU_JOB, "--time", "10", env=slow)
        checkpoints_before = len(list((run_dir / "checkpoints").glob("step-*/COMPLETE")))
        wait_for(lambda: len(list((run_dir / "checkpoints").glob("step-*/COMPLETE"))) > checkpoints_before,
                 "a checkpoint of this start", run_dir)
        subprocess.run(["scancel", *how, job], check=True)
        wait_for(lambda: queue_state(job) == "", "the signalled job to leave the queue", run_dir)
        assert job_state(job) == final_state, job_logs(run_dir)
        assert len(stops()) == k + 1, job_logs(run_dir)
        stop = stops()[-1]
        assert stop["stop_s"] < 10, stop  # from the signal to the checkpoint written: inside KillWait
        assert (run_dir / "checkpoints" / f"step-{stop['step']:09d}" / "COMPLETE").exists()  # nothing lost
        # Each rank's log says it stopped, and where; submitit's "Job completed successfully" does not follow.
        logs = job_logs(run_dir, tail=0)
        assert logs.count(f"stopped by SIGTERM at step {stop['step']}: checkpoint saved; not requeued") == 2, logs
        assert "Job completed successfully" not in logs, logs
        assert not (run_dir / "results.json").exists()
        status = launch_here("status", str(run_dir)).stdout
        row = next(line for line in status.splitlines() if line.startswith(str(run_dir)))
        assert row.split()[1:3] == [said, f"{stop['step']}/160"], status
        assert f"it resumes from step {stop['step']} (its last checkpoint)" in status, status
    submit(run_dir, overrides, *CPU_JOB, "--time", "10")
    wait_finished([run_dir])
    logs = job_logs(run_dir, tail=0)
    assert all(f"resuming {run_dir} from step {stop['step']}" in logs for stop in stops()), logs
    assert "Traceback" not in logs and json.loads((run_dir / "results.json").read_text())["train"]["step"] == 160
    # One W&B run over the three starts. The signalled starts' W&B services died with them, before writing what they
    # held; the last start sent W&B those records again from metrics.jsonl: every step is there, once, in order.
    runs = offline_runs(run_dir)
    assert len({r.run_id for r in runs if r.run_id}) == 1
    assert [row["_step"] for row in runs[-1].history if "loss" in row] == list(range(2, 161, 2))


def test_a_job_cancelled_before_it_started_is_cancelled_not_failed(digits_dataset, tmp_path):
    """A pending job (held until later, so that it cannot start first) cancelled is not a failure."""
    require_minicluster()
    run_dir = tmp_path / "t"
    job = submit(run_dir, small_run(digits_dataset, tmp_path), *CPU_JOB, "--time", "5", "--sbatch", "begin=now+1hour")
    assert queue_state(job) == "PENDING"
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: queue_state(job) == "", "the cancelled job to leave the queue", run_dir)
    status = launch_here("status", str(run_dir)).stdout
    row = next(line for line in status.splitlines() if line.startswith(str(run_dir)))
    assert row.split()[1:3] == ["cancelled", "0"] and "failed" not in status, status  # (no start: no total)
    assert "nothing saved: started again, it starts from step 0" in status, status


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

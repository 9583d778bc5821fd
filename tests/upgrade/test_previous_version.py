"""What the version before the restructure left behind still works (tests/fixtures/previous_version, made by it):
its run directory resumes and evaluates, and the SLURM jobs it queued run, their callables found by the module
paths submitit pickled."""

import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.submit.jobs import EvalJob, PrepTask, TrainJob
from launch.submit.slurm import make_executor
from pipeline.config import SlurmConfig
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics
from pipeline.run.results import read_results
from tests.support import REPO, TESTS
from tests.support.slurm import job_logs, queue_state, require_minicluster
from tests.support.training import env
from tests.support.wandb_offline import offline_runs

PREVIOUS = TESTS / "fixtures" / "previous_version"
STOPPED_AT, TOTAL = 40, 60  # the fixture's run: stopped by SIGTERM at step 40 of 60


def previous_run(digits: Path, folder: Path) -> Path:
    """A copy of the previous version's run directory in `folder`, its config pointing at this machine's paths."""
    run_dir = folder / "legacy-run"
    shutil.copytree(PREVIOUS / "runs" / "legacy-run", run_dir)
    config = RunDir(run_dir).config
    config.write_text(config.read_text().replace("@OUT_DIR@", str(folder)).replace("@DATA_ROOT@", str(digits)))
    return run_dir


def test_a_run_directory_of_the_previous_version_evaluates_and_resumes(digits_dataset, tmp_path):
    """Its checkpoint evaluates as it is; training the same config resumes it at its step (the loader's position
    and RNG restored, not an epoch replayed), continues its W&B run (offline, as users run) and finishes."""
    run_dir = previous_run(digits_dataset, tmp_path)
    run = RunDir(run_dir)
    evaluate = subprocess.run([sys.executable, "-m", "pipeline.evaluate", str(run_dir)], capture_output=True,
                              text=True, cwd=REPO, env=env(), timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    evaluated = read_results(run_dir)["eval"]["center"]
    assert evaluated["step"] == STOPPED_AT and evaluated["samples"] == 297

    train = subprocess.run([sys.executable, "-m", "pipeline.train", str(run.config)], capture_output=True, text=True,
                           cwd=REPO, env=env(), timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"resuming {run_dir} from step {STOPPED_AT}" in train.stderr
    assert "data order of an epoch depends on the world size" not in train.stderr  # the rank state was used
    final = read_results(run_dir)["train"]
    assert final["step"] == TOTAL and final["samples"] == 297
    steps = [m["step"] for m in read_metrics(run_dir) if "loss" in m]
    assert steps == sorted(set(steps)) and steps[-1] == TOTAL and min(s for s in steps if s > STOPPED_AT) == 45
    # The same W&B run, continued: the previous version's offline run and this start's, one id.
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and {r.run_id for r in runs} == {run.wandb_id.read_text()}


def test_jobs_pickled_by_the_previous_version_unpickle_to_todays_callables(tmp_path, monkeypatch):
    """Each kind of job submitit pickled before the restructure (`launch.slurm.TrainJob`, `EvalJob`, `PrepTask`,
    `launch.reproduce.ReportJob`, `launch.bench.BenchJob`) loads as today's callable with its state."""
    from launch.plan.bench import BenchJob
    from launch.reproduce.report_job import ReportJob

    def load(kind: str):
        delayed = pickle.loads((PREVIOUS / "jobs" / f"{kind}_submitted.pkl").read_bytes())
        return delayed.function

    assert type(load("train")) is TrainJob and load("train").run_dir == "legacy-run"
    evaluation = load("evaluate")
    assert type(evaluation) is EvalJob and (evaluation.protocol, evaluation.which_checkpoint) == ("center", "last")
    assert type(load("prep")) is PrepTask and (load("prep").num_tasks, load("prep").task_id) == (2, 1)
    assert type(load("report")) is ReportJob and load("report").runs_dir == Path("runs")
    assert type(load("bench")) is BenchJob and load("bench").run_dir == "bench-run"


@pytest.mark.slow
@pytest.mark.slurm
def test_a_training_job_queued_by_the_previous_version_runs_after_the_upgrade(digits_dataset, tmp_path):
    """The previous version's pickled TrainJob, queued on the real minicluster, runs today's trainer: it resumes
    the previous version's run directory and finishes it. Then its pickled EvalJob evaluates the result."""
    require_minicluster()
    run_dir = previous_run(digits_dataset, tmp_path)
    # A job that waits (its start an hour away) while its callable is replaced by the previous version's pickle; the
    # pickle names its run directory relatively, so the job starts in the folder that holds it.
    resources = SlurmConfig(gpus_per_node=0, tasks_per_node=1, cpus_per_task=1, time_minutes=20,
                            additional={"begin": "now+1hour", "chdir": str(tmp_path)})
    executor = make_executor(tmp_path / "slurm", resources, "previous-version")
    job = executor.submit(TrainJob("not-this-one"))
    shutil.copy(PREVIOUS / "jobs" / "train_submitted.pkl", job.paths.submitted_pickle)
    subprocess.run(["scontrol", "update", f"jobid={job.job_id}", "starttime=now"], check=True)
    deadline = time.time() + 600
    while queue_state(job.job_id) and time.time() < deadline:
        time.sleep(1)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "slurm").glob("*_log.*")))
    assert not queue_state(job.job_id), "the job did not end in time:\n" + logs[-3000:] + job_logs(run_dir)
    result = job.result()
    assert result["step"] == TOTAL and not result.get("interrupted"), logs[-3000:]
    assert f"resuming {run_dir} from step {STOPPED_AT}" in logs
    assert RunDir(run_dir).slurm_job_id.read_text() == str(job.job_id)  # recorded by the job, for `launch status`
    assert read_results(run_dir)["train"]["step"] == TOTAL

    evaluation = pickle.loads((PREVIOUS / "jobs" / "evaluate_submitted.pkl").read_bytes()).function
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        record = evaluation()
    assert record["step"] == TOTAL and read_results(run_dir)["eval"]["center"]["step"] == TOTAL

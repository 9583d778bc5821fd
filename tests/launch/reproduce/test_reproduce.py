"""`launch reproduce`: a whole table (train, evaluate with the table's protocol, report) from one command.

On the real minicluster the chain runs as SLURM jobs tied by dependencies: a 3-run table of the digits
read with ten crops (the digits trained ImageNet-style, 24-pixel crops of 28-32 pixel rescales, so that
ten-crop testing has corners to take). One training is preempted and requeued on the way: its
evaluation must wait for the requeued training to finish. `--local` runs the same chain in-process.
"""

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.report.write import write_report
from pipeline.run.results import read_results
from tests.support import DEMO_CONFIG, REPO
from tests.support.commands import launch_here
from tests.support.slurm import job_state, launch, queue_state, require_minicluster
from tests.support.wandb_offline import offline_runs, read_offline_run

pytestmark = pytest.mark.slow
CPU_JOB = ["--gpus-per-node", "0", "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "20"]
ROWS = {"cifar_resnet8": 200, "cifar_plain8": 20, "cifar_resnet14": 20}  # model: training steps


def _table(tmp_path: Path, protocol: str = "tencrop", rows=ROWS) -> Path:
    table = tmp_path / "digits_tencrop.yaml"
    lines = [f"  - {{label: {name}, config: {DEMO_CONFIG}, overrides: [model.name={name}, run.name={name}, "
             f"schedule.total={steps}]}}" for name, steps in rows.items()]
    table.write_text(f"title: digits, {protocol}\nkind: table\nmetrics: [top1_error, top5_error]\n"
                     f"protocol: {protocol}\nrows:\n" + "\n".join(lines) + "\n")
    return table


def _common(digits: Path) -> list:
    return [f"data.root={digits}", "data.augmentation=paper", "data.image_size=24", "data.resize_min=28",
            "data.resize_max=32", "data.pca_lighting=0", "schedule.unit=iteration", "schedule.milestones=[]",
            "eval.every_epochs=0", "logging.every_steps=10", "checkpoint.every_steps=50",
            "checkpoint.check_every_steps=2", "logging.wandb_mode=offline"]


def _all_logs(root: Path) -> str:
    return "".join(f"--- {p}\n{p.read_text()[-2000:]}\n" for p in sorted(root.rglob("*_log.*")))


def _wait_for_report(runs: Path, stem: str, timeout: float = 1200) -> None:
    """Until the report job has completed; requeued jobs are released from SLURM's begin-time hold."""
    job_file = runs / "reports" / f"{stem}.slurm_job_id"
    deadline = time.time() + timeout
    while True:
        job = job_file.read_text().strip()
        state = job_state(job)
        if state == "COMPLETED":
            return
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT"), f"report job {state}:\n" + _all_logs(runs)
        assert time.time() < deadline, f"no report within {timeout:.0f}s:\n" + _all_logs(runs)
        for id_file in runs.glob("*/slurm_job_id"):
            training = id_file.read_text().strip()
            if queue_state(training) == "PENDING" and (id_file.parent / "checkpoints").exists():
                subprocess.run(["scontrol", "update", f"jobid={training}", "starttime=now"], capture_output=True)
        time.sleep(1)


@pytest.mark.slurm
def test_reproduce_trains_evaluates_and_reports_a_table_with_no_further_command(digits_dataset, tmp_path):
    require_minicluster()
    table, runs = _table(tmp_path), tmp_path / "runs"
    args = ["reproduce", str(table), *_common(digits_dataset), "--runs", str(runs), *CPU_JOB]

    dry = launch(*args, "--dry-run")
    assert "would submit a job array of 3 tasks" in dry, dry
    for i, name in enumerate(ROWS):
        assert f"train[{i}]" in dry and f"afterok:train[{i}]" in dry
    assert "afterany:eval[0]:eval[1]:eval[2]" in dry and str(runs / "reports" / "digits_tencrop.md") in dry
    assert not runs.exists()  # a dry run writes nothing

    # Called twice at the same moment (a user's second terminal, a script run twice): every job is submitted once.
    calls = [subprocess.Popen([sys.executable, "-m", "launch", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [call.communicate(timeout=300) for call in calls]
    assert all(call.returncode == 0 for call in calls), outputs
    submitted = [out for out, err in outputs if "submitted a job array" in out]
    assert len(submitted) == 1, outputs
    out = submitted[0]
    assert "submitted a job array of 3 tasks" in out and "submitted 3 jobs" in out, out
    second = next(out for out, err in outputs if out is not submitted[0])
    assert "submitted" not in second and "nothing to submit: the rest is in the queue" in second, second
    assert all(f"skip {name}, seed 0: " in second for name in ROWS), second  # it waited, then found them queued
    long_run = runs / "cifar_resnet8-seed0"
    training = (long_run / "slurm_job_id").read_text().strip()
    evaluation = (long_run / "slurm_eval_tencrop_job_id").read_text().strip()
    # Preempt the long training after its first checkpoint: it saves, requeues, and its evaluation waits on.
    marker = long_run / "checkpoints" / "step-000000050" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists():
        assert time.time() < deadline, "no first checkpoint:\n" + _all_logs(runs)
        time.sleep(0.1)
    assert queue_state(evaluation) == "PENDING"
    subprocess.run(["scancel", "--signal=USR2", training], check=True)
    _wait_for_report(runs, "digits_tencrop")

    assert any(m.get("event") == "stopped by SIGUSR2" for m in map(json.loads, (long_run / "metrics.jsonl")
                                                                    .read_text().splitlines()))
    for name, steps in ROWS.items():
        results = read_results(runs / f"{name}-seed0")
        assert results["train"]["step"] == steps
        assert results["eval"]["tencrop"]["step"] == steps and results["eval"]["tencrop"]["samples"] == 297
        wandb_run = offline_runs(runs / f"{name}-seed0")[-1]
        assert wandb_run.group == "digits_tencrop" and {f"row:{name}", "seed:0"} <= set(wandb_run.tags)
    report = (runs / "reports" / "digits_tencrop.md").read_text()
    assert "Runs not done" not in report and report.count("| 1/1 | done |") == 3, report
    for name in ROWS:
        top1 = read_results(runs / f"{name}-seed0")["eval"]["tencrop"]["top1_error"]
        assert f"| {name} | – | {top1:.2f} |" in report, report

    # The report as a W&B table, in the runs' group.
    report_run = read_offline_run(next((runs / "reports").glob("wandb/offline-run-*/run-*.wandb")))
    assert (report_run.group, report_run.job_type) == ("digits_tencrop", "report")
    logged = next(row["digits_tencrop/path"] for row in report_run.history if row.get("digits_tencrop/_type") ==
                  "table-file")
    table_file = next((runs / "reports").glob(f"wandb/offline-run-*/files/{logged}"))
    wandb_table = json.loads(table_file.read_text())
    assert [row[0] for row in wandb_table["data"]] == list(ROWS) and wandb_table["columns"][0] == "row"

    again = launch(*args)
    assert "nothing to submit" in again and "submitted" not in again, again

    # A lost evaluation is all that is submitted again (and the report after it).
    results_file = runs / "cifar_plain8-seed0" / "results.json"
    results = json.loads(results_file.read_text())
    del results["eval"]
    results_file.write_text(json.dumps(results))
    partial = launch(*args)
    assert "train:" not in partial and "submitted 1 jobs" in partial and "trained: starts now" in partial, partial
    _wait_for_report(runs, "digits_tencrop")
    assert read_results(runs / "cifar_plain8-seed0")["eval"]["tencrop"]["step"] == 20


@pytest.mark.slurm
def test_a_failed_training_removes_its_evaluation_and_the_report_says_so(digits_dataset, tmp_path):
    require_minicluster()
    table, runs = _table(tmp_path, rows={"cifar_resnet8": 10}), tmp_path / "runs"
    asked = ["reproduce", str(table), *_common(digits_dataset), f"data.root={tmp_path / 'no-such-shards'}",
             "--runs", str(runs), *CPU_JOB]
    # A dataset that is not there: refused before anything is queued or written.
    refused = subprocess.run([sys.executable, "-m", "launch", *asked], capture_output=True, text=True, cwd=REPO)
    manifest = tmp_path / "no-such-shards" / "manifest.json"
    assert refused.returncode == 2 and f"error: data.root: {manifest}: no manifest" in refused.stderr, refused.stderr
    assert not runs.exists()
    # Let through (as for data only the compute nodes see), it fails the training on the cluster.
    out = launch(*asked, "--no-data-check")
    assert "submitted 1 jobs" in out, out
    _wait_for_report(runs, "digits_tencrop", timeout=600)
    run_dir = runs / "cifar_resnet8-seed0"
    training = (run_dir / "slurm_job_id").read_text().strip()
    evaluation = (run_dir / "slurm_eval_tencrop_job_id").read_text().strip()
    assert job_state(training) == "FAILED"
    assert job_state(evaluation) == "CANCELLED"  # its dependency can never be met: SLURM removed it
    report = (runs / "reports" / "digits_tencrop.md").read_text()
    assert "| cifar_resnet8 | – | – |" in report and "cifar_resnet8, seed 0: failed, nothing saved" in report, report
    # `status` says why, with the one `error:` line `launch local` gives, and where the whole log is.
    status = _launch_here("status", str(table), "--runs", str(runs))
    lines = status.splitlines()
    failed = lines[lines.index(next(line for line in lines if " failed " in line)) + 1]
    assert f"error: {manifest}: no manifest" in failed, status
    assert f"(log: {runs / '_sweeps' / 'digits_tencrop'}" in failed, status


def _launch_here(*args: str) -> str:
    """`python -m launch <args>` in this process (what it printed); it must succeed."""
    proc = launch_here(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_reproduce_local_keeps_what_it_was_asked_for_status_the_report_and_the_next_call(digits_dataset, tmp_path):
    """Part of a table (one row of two, two seeds, shrunk by overrides) run here: `status`, the report and a second
    call count exactly those runs; the report's command for what is left asks the same again."""
    table, runs = _table(tmp_path, rows={"cifar_resnet8": 10, "cifar_plain8": 10}), tmp_path / "runs"
    # W&B off: this is about what is counted and repeated; no run here is stopped, and the SLURM test above runs
    # the same chain with W&B offline.
    asked = ["reproduce", str(table), "--seeds", "0", "1", *_common(digits_dataset), "logging.wandb_mode=disabled",
             "--runs", str(runs), "--rows", "cifar_resnet8", "--local", "--nproc", "1"]
    # Two trainings and two evaluations in one command: longer than `launch`'s limit on a busy machine.
    proc = subprocess.run([sys.executable, "-m", "launch", *asked], capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for seed in (0, 1):
        assert read_results(runs / f"cifar_resnet8-seed{seed}")["eval"]["tencrop"]["step"] == 10, out
    assert not (runs / "cifar_plain8-seed0").exists()  # the row not asked for

    status = _launch_here("status", str(table), "--runs", str(runs))
    assert "digits_tencrop.yaml: 2/2 runs finished, 2/2 evaluated (tencrop), 100% of all steps" in status, status
    assert "cifar_plain8" not in status and "as asked: python -m launch reproduce" in status
    report = (runs / "reports" / "digits_tencrop.md").read_text()
    assert report.count("| 2/2 | done |") == 1 and "cifar_plain8" not in report, report
    # The table and the runs directory alone: the same request again, nothing left to do.
    again = _launch_here("reproduce", str(table), "--runs", str(runs))
    assert "as asked before: python -m launch reproduce" in again and "nothing to do" in again, again

    # An evaluation lost: the report's command for what is left repeats the request, and would evaluate that alone.
    results_file = runs / "cifar_resnet8-seed1" / "results.json"
    results = json.loads(results_file.read_text())
    del results["eval"]
    results_file.write_text(json.dumps(results))
    write_report(table, runs, runs / "reports")
    report = (runs / "reports" / "digits_tencrop.md").read_text()
    hint = re.search(r"stopped runs resume from their last checkpoint\): `python -m launch (reproduce [^`]+)`",
                     report)
    assert hint and "--rows cifar_resnet8" in hint[1] and "--seeds 0 1" in hint[1], report
    dry = _launch_here(*shlex.split(hint[1]), "--dry-run")
    assert "would evaluate cifar_resnet8, seed 1 here in 1 process(es)" in dry, dry
    assert "would train" not in dry and "cifar_plain8" not in dry, dry

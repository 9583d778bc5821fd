"""`python -m launch reproduce configs/tables/<table>.yaml --runs DIR`: a whole paper table, one command.

One call submits a chain of SLURM jobs that ends, with no further command, in the table's report:

1. one job array that trains every run of the table (each task checkpoints and requeues on its own);
2. per run, an evaluation with the table's protocol (ten-crop for Tables 2-3, multi-scale for Table 4,
   layer responses for Fig. 7) that SLURM starts only once that run's training has ended successfully
   (`afterok`). A requeued training keeps its job id, so the dependency holds across time-outs and
   preemptions; an evaluation whose training failed can never start and SLURM removes it
   (`kill-on-invalid-dep`). Tables read with the centre view need no such job: training's own final
   evaluation is that protocol;
3. a report job, once every evaluation (or, without any, every training) has ended whichever way
   (`afterany`), that writes DIR/reports/<table>.md, its figure, and the table as a W&B table. A run
   that failed shows there as failed.

Calling it again submits only what is missing or failed: a finished run, or one in the queue, is not
trained again; an evaluation recorded for the run's final step, or in the queue, is not run again; the
report is written again once there is something new to report. `--dry-run` prints the jobs and their
dependencies and submits nothing. What was asked (overrides, --seeds, --rows, the job flags) is kept in
DIR/<table>.reproduce.json: `launch status` and the report count those runs, and a call with the table and
--runs alone asks the same again. `--local --nproc N` runs the same chain on this machine, run after
run, each in N processes.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from launch.reproduce.chain import RunStep, plan_steps, recorded_job, report_is_current, run_chain_locally, submit_chain
from launch.reproduce.report_job import write_table_report
from launch.reproduce.request import ReproduceRequest
from launch.submit.checks import check_prepared, check_startable, print_gpu_shares
from launch.submit.kill_wait import warn_of_slow_stops
from launch.submit.queue import queue_state
from launch.submit.slurm import submission_lock
from pipeline.run.layout import RunsFolder
from pipeline.run.state import read_run_state
from pipeline.tables.request import TableRequest, save_request
from pipeline.tables.spec import PlannedRun, TableConfig, load_table, table_evaluation, unique_runs

ARRAY_PARALLELISM = 64  # training tasks at once, unless --array-parallelism says otherwise


def reproduce(request: ReproduceRequest) -> int:
    """`launch reproduce`: submit (or run here) what the table's runs still need, and the report after it."""
    table_path, runs_dir = Path(request.table).resolve(), Path(request.runs).resolve()
    table = load_table(table_path)
    asked = request.table_request()
    runs = unique_runs(asked.planned(runs_dir))
    submitting = not (request.local or request.dry_run)
    if submitting and not shutil.which("sbatch"):
        print("error: no SLURM here (sbatch not found); run the chain on this machine with --local --nproc N")
        return 2
    if submitting:  # jobs that could never start, or never find their data, refused before anything is written
        check_startable(request.resources.applied_to(runs[0].cfg.slurm))
        # "finished" is the files' word alone: no need to ask SLURM
        unfinished = [run.cfg for run in runs if read_run_state(run.run_dir).state != "finished"]
        warn_of_slow_stops(unfinished)
        if not request.no_data_check:
            check_prepared(unfinished)
    # Deciding what is missing and submitting it happen under one lock: a second call at the same moment waits,
    # then finds this one's jobs in the queue and submits nothing twice.
    with submission_lock(runs_dir) if submitting else contextlib.nullcontext():
        return _reproduce(request, table, table_path, runs_dir, runs, asked)


def _reproduce(request: ReproduceRequest, table: TableConfig, table_path: Path, runs_dir: Path,
               runs: list[PlannedRun], asked: TableRequest) -> int:
    evaluation = table_evaluation(table.kind, table.protocol)
    steps = plan_steps(runs, evaluation)
    if not request.dry_run:  # what was asked, for `launch status`, the report and the next call
        save_request(runs_dir, asked)
    report = RunsFolder(runs_dir).report(table_path)
    print(f"{table.title}: {len(runs)} runs in {runs_dir}")
    _say_skipped(steps)
    pending = any(s.train == "submit" or s.evaluate == "submit" for s in steps)
    if request.local and not pending and report_is_current(report, runs):
        print(f"nothing to do: every run is trained and evaluated; the report is {report}")
        return 0
    if request.local and request.dry_run:
        for step in steps:
            work = [what for what, state in (("train", step.train), ("evaluate", step.evaluate)) if state == "submit"]
            if work:
                print(f"would {' and '.join(work)} {step.name} here in {request.nproc} process(es)")
        print(f"would write {report}")
        return 0
    if request.local:
        return run_chain_locally(steps, evaluation, table_path, runs_dir, request.nproc)
    if not request.dry_run and not shutil.which("sbatch"):  # a dry run only prints: it needs no SLURM
        print("error: no SLURM here (sbatch not found); run the chain on this machine with --local --nproc N")
        return 2
    resources = request.resources.applied_to(runs[0].cfg.slurm)
    print_gpu_shares({s.name: s.run.cfg for s in steps if s.train == "submit"}, resources)
    if submit_chain(steps, evaluation, table_path, runs_dir, resources,
                    request.array_parallelism or ARRAY_PARALLELISM, request.dry_run):
        return 0
    if any(s.train == "queued" or s.evaluate == "queued" for s in steps) or _report_job_queued(runs_dir, table_path):
        print("nothing to submit: the rest is in the queue")
    elif report_is_current(report, runs):
        print(f"nothing to submit: every run is trained and evaluated; the report is {report}")
    elif not request.dry_run:
        for path in write_table_report(table_path, runs_dir):
            print(f"nothing to submit: every run is trained and evaluated; written: {path}")
    else:
        print(f"nothing to submit; would write {report}")
    return 0


def _say_skipped(steps: list[RunStep]) -> None:
    for step in steps:
        done = [what for what, state in (("trained", step.train), ("evaluated", step.evaluate)) if state == "done"]
        queued = [f"{what} (job {job})" for what, state, job in (("training", step.train, step.train_job),
                                                                ("evaluation", step.evaluate, step.eval_job))
                  if state == "queued"]
        if done or queued:
            print(f"  skip {step.name}: " + ", ".join(done + [q + " in the queue" for q in queued]))


def _report_job_queued(runs_dir: Path, table_path: Path) -> bool:
    job = recorded_job(RunsFolder(runs_dir).report_job_id(table_path))
    return job is not None and queue_state(job) is not None

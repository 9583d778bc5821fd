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

import argparse
import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from launch.submit.slurm import JOB_ID_FILE, JobResources, check_prepared, check_startable, make_executor, prepare_planned_run, print_gpu_shares, resource_flags, resources_from_flags, submission_lock
from pipeline.run.results import protocol_result, read_layer_responses, read_results
from pipeline.tables.request import TableRequest, load_request, save_request
from pipeline.tables.spec import PlannedRun, load_table, unique_runs

IN_QUEUE = ("queued", "running", "requeued")
REPORTS_DIR = "reports"


@dataclass
class Evaluation:
    """The table's evaluation of a run: a protocol, or Fig. 7's layer responses (on the centre view)."""

    protocol: str
    layer_responses: bool = False

    @property
    def name(self) -> str:
        return "layer responses" if self.layer_responses else self.protocol

    @property
    def job_id_file(self) -> str:
        return f"slurm_eval_{'responses' if self.layer_responses else self.protocol}_job_id"


@dataclass
class RunStep:
    """What one run of the table still needs: training, evaluation, each done, in the queue or to submit."""

    run: PlannedRun
    train: str  # done | queued | submit
    train_job: Optional[str]  # the job id of a training in the queue
    evaluate: str  # done | queued | submit | none (the table reads what training records)
    eval_job: Optional[str] = None
    stale_eval_job: Optional[str] = None  # an earlier evaluation of this run, replaced by the one submitted now

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def name(self) -> str:
        return f"{self.run.label}, seed {self.run.seed}"


def table_evaluation(kind: str, protocol: str) -> Optional[Evaluation]:
    """The job a table (of `kind`, read with `protocol`) needs after training, if any: curves are read from
    training's own log, and a centre-view table from training's final evaluation."""
    if kind == "responses":
        return Evaluation("center", layer_responses=True)
    if kind == "table" and protocol != "center":
        return Evaluation(protocol)
    return None


def plan_steps(runs: List[PlannedRun], evaluation: Optional[Evaluation]) -> List[RunStep]:
    from launch.submit.queue import queue_entries
    from launch.reproduce.status import run_statuses

    # SLURM's queue asked twice in all (the trainings, then the evaluations), not twice a run.
    statuses = run_statuses([run.run_dir for run in runs])
    eval_jobs = [_recorded_job(run.run_dir / evaluation.job_id_file) if evaluation else None for run in runs]
    queued_evals = queue_entries([job for job in eval_jobs if job])
    steps = []
    for run, status, job in zip(runs, statuses, eval_jobs):
        if status.state == "finished":
            train, train_job = "done", None
        elif status.state in IN_QUEUE:
            train, train_job = "queued", status.job_id
        else:  # not started, stopped (resumes from its checkpoint), failed
            train, train_job = "submit", None
        step = RunStep(run, train, train_job, "none")
        if evaluation is not None:
            if train == "done" and _evaluated(run.run_dir, evaluation):
                step.evaluate = "done"
            elif job in queued_evals and train != "submit":
                step.evaluate, step.eval_job = "queued", job
            else:
                # A training submitted again needs an evaluation that waits for it; one still waiting for the
                # training that failed (where SLURM keeps such jobs) could never start: it is cancelled then.
                step.evaluate, step.stale_eval_job = "submit", job
        steps.append(step)
    return steps


def _recorded_job(path: Path) -> Optional[str]:
    """The SLURM job id a file records, if there is one."""
    if not path.exists():
        return None
    return path.read_text().strip() or None


def _evaluated(run_dir: Path, evaluation: Evaluation) -> bool:
    """Whether the run has the evaluation, of its final weights (not of a checkpoint half-way through)."""
    results = read_results(run_dir)
    final_step = results.get("train", {}).get("step")
    found = read_layer_responses(run_dir) if evaluation.layer_responses else \
        protocol_result(results, evaluation.protocol)
    return found is not None and found.get("step") == final_step


def report_is_current(report: Path, runs: List[PlannedRun]) -> bool:
    """The report exists and is newer than every result it reads."""
    if not report.exists():
        return False
    written = report.stat().st_mtime
    sources = [run.run_dir / name for run in runs for name in ("results.json", "layer_responses.json")]
    return all(not p.exists() or p.stat().st_mtime <= written for p in sources)


# -- SLURM --------------------------------------------------------------------------------------------

class ReportJob:
    """The callable of the report job: `pipeline.report` of the table over its runs, and its W&B table."""

    def __init__(self, table_path: Path, runs_dir: Path) -> None:
        self.table_path, self.runs_dir = Path(table_path), Path(runs_dir)

    def __call__(self) -> List[str]:
        return [str(p) for p in write_table_report(self.table_path, self.runs_dir)]


def write_table_report(table_path: Path, runs_dir: Path) -> List[Path]:
    """The report, with SLURM's word on each run (a run whose job failed shows as failed) and its W&B table."""
    from launch.reproduce.status import run_statuses
    from pipeline.report.write import write_report

    return write_report(table_path, runs_dir, runs_dir / REPORTS_DIR, states_of=run_statuses, wandb=True)


def _report_resources(resources: JobResources) -> JobResources:
    """A report reads files and draws a figure: one CPU task, wherever the training jobs may run."""
    return JobResources(nodes=1, gpus_per_node=0, tasks_per_node=1, cpus_per_task=1, time_minutes=30,
                        partition=resources.partition, account=resources.account, qos=resources.qos,
                        max_requeues=resources.max_requeues, additional=dict(resources.additional))


def _after(kind: str, job_ids: List[str]) -> Optional[str]:
    return f"{kind}:{':'.join(job_ids)}" if job_ids else None


def submit_chain(steps: List[RunStep], evaluation: Optional[Evaluation], table_path: Path, runs_dir: Path,
                 resources: JobResources, array_parallelism: int, dry_run: bool) -> int:
    """Submit (or, dry, print) what `steps` still need and the report after them; returns the jobs submitted."""
    from launch.submit.slurm import submit_array, submit_evaluation

    to_train = [s for s in steps if s.train == "submit"]
    to_evaluate = [s for s in steps if s.evaluate == "submit"]
    verb = "would submit" if dry_run else "submitted"
    submitted = 0
    if to_train or to_evaluate:
        print(f"each training and evaluation job: {resources.nodes} node(s) x {resources.ntasks_per_node} task(s), "
              f"{resources.gpus_per_node} GPU(s) per node, {resources.time_minutes} min"
              + (f", partition {resources.partition}" if resources.partition else ""))
    if to_train:
        run_dirs = [s.run_dir if dry_run else prepare_planned_run(s.run) for s in to_train]
        if dry_run:
            ids = [f"train[{i}]" for i in range(len(to_train))]
        else:
            ids = [str(job.job_id) for job in submit_array(run_dirs, resources, table_path.stem,
                                                           runs_dir / "_sweeps" / table_path.stem, array_parallelism)]
        print(f"train: {verb} a job array of {len(ids)} tasks (at most {array_parallelism} at once)")
        for step, job_id in zip(to_train, ids):
            step.train_job = job_id
            print(f"  {job_id:<14} {step.name:<28} {step.run_dir}")
        submitted += len(ids)
    if to_evaluate:
        print(f"evaluate ({evaluation.name}): {verb} {len(to_evaluate)} jobs, each once its training has "
              "ended successfully")
        for i, step in enumerate(to_evaluate):
            after = step.train_job if step.train != "done" else None
            if dry_run:
                step.eval_job = f"eval[{i}]"
            else:
                if step.stale_eval_job:
                    subprocess.run(["scancel", step.stale_eval_job], capture_output=True)
                job = submit_evaluation(step.run_dir, resources, evaluation.protocol, "last",
                                        evaluation.layer_responses, after=after)
                step.eval_job = str(job.job_id)
                (step.run_dir / evaluation.job_id_file).write_text(step.eval_job)
            print(f"  {step.eval_job:<14} {step.name:<28} {f'afterok:{after}' if after else 'trained: starts now'}")
        submitted += len(to_evaluate)
    if submitted:
        awaited = [s.eval_job for s in steps if s.eval_job] if evaluation else \
            [s.train_job for s in steps if s.train_job]
        dependency = _after("afterany", awaited)
        report = runs_dir / REPORTS_DIR / f"{table_path.stem}.md"
        if dry_run:
            job_id = "report"
        else:
            report.parent.mkdir(parents=True, exist_ok=True)
            executor = make_executor(runs_dir / REPORTS_DIR / "_slurm", _report_resources(resources),
                                     f"report-{table_path.stem}")
            executor.update_parameters(dependency=dependency)
            job_id = str(executor.submit(ReportJob(table_path, runs_dir)).job_id)
            _report_job_file(runs_dir, table_path).write_text(job_id)
        print(f"report: {verb} job {job_id}, once every job above has ended ({dependency or 'now'}) -> {report}")
        submitted += 1
    return submitted


# -- this machine -------------------------------------------------------------------------------------

def run_chain_locally(steps: List[RunStep], evaluation: Optional[Evaluation], table_path: Path, runs_dir: Path,
                      nproc: int) -> int:
    """The same chain, here: train, evaluate, then report; a run that fails does not stop the others."""
    from launch.submit.local import run_local, run_module_local, stopped_by_user

    failed = []
    for step in steps:
        if step.train == "queued":
            print(f"skip {step.name}: its training is in the SLURM queue (job {step.train_job})")
            continue
        if step.train == "submit":
            print(f"train {step.name} in {nproc} process(es): {step.run_dir}", flush=True)
            code = run_local(str(prepare_planned_run(step.run) / "config.yaml"), [], nproc)
            if stopped_by_user(code):
                print(f"stopped while training {step.name}; the same command resumes it")
                return code
            if code != 0:
                failed.append(f"training of {step.name} (exit code {code})")
                continue
        if step.evaluate == "submit":
            print(f"evaluate {step.name} ({evaluation.name}) in {nproc} process(es)", flush=True)
            flags = ["--protocol", evaluation.protocol] + (["--layer-responses"] if evaluation.layer_responses else [])
            code = run_module_local("pipeline.evaluate", [str(step.run_dir), *flags], nproc)
            if stopped_by_user(code):
                return code
            if code != 0:
                failed.append(f"evaluation of {step.name} (exit code {code})")
    for path in write_table_report(table_path, runs_dir):
        print(f"written: {path}")
    if failed:
        print("failed: " + "; ".join(failed))
        return 1
    return 0


# -- the command --------------------------------------------------------------------------------------

ARRAY_PARALLELISM = 64  # training tasks at once, unless --array-parallelism says otherwise


def reproduce(args: argparse.Namespace) -> int:
    table_path, runs_dir = Path(args.table).resolve(), Path(args.runs).resolve()
    table = load_table(table_path)
    request, saved = _request(args, table_path), load_request(runs_dir, table_path)
    if saved is not None and request == TableRequest(str(table_path)):
        # The table and its runs directory alone: the request recorded there, again (with this call's --dry-run).
        print(f"as asked before: {saved.command(runs_dir)}")
        from launch.cli.parsers import parse

        args = parse(["reproduce", *saved.arguments(runs_dir), *(["--dry-run"] if args.dry_run else [])])
        request = saved
    runs = unique_runs(request.planned(runs_dir))
    submitting = not (args.local or args.dry_run)
    if submitting and not shutil.which("sbatch"):
        print("error: no SLURM here (sbatch not found); run the chain on this machine with --local --nproc N")
        return 2
    if submitting:  # jobs that could never start, or never find their data, refused before anything is written
        from pipeline.run.state import read_run_state  # "finished" is the files' word alone: no need to ask SLURM

        check_startable(resources_from_flags(args, runs[0].cfg.slurm))
        if not args.no_data_check:
            check_prepared([run.cfg for run in runs if read_run_state(run.run_dir).state != "finished"])
    # Deciding what is missing and submitting it happen under one lock: a second call at the same moment waits,
    # then finds this one's jobs in the queue and submits nothing twice.
    with submission_lock(runs_dir) if submitting else contextlib.nullcontext():
        return _reproduce(args, table, table_path, runs_dir, runs, request)


def _request(args: argparse.Namespace, table_path: Path) -> TableRequest:
    """What this call asks: its overrides, seeds, rows, and how its jobs run."""
    flags = resource_flags(args)
    if args.array_parallelism is not None:
        flags += ["--array-parallelism", str(args.array_parallelism)]
    if args.local:
        flags += ["--local", "--nproc", str(args.nproc)]
    if args.no_data_check:
        flags.append("--no-data-check")
    return TableRequest(str(table_path), list(args.overrides), args.seeds, args.rows, flags)


def _reproduce(args: argparse.Namespace, table, table_path: Path, runs_dir: Path, runs: List[PlannedRun],
               request: TableRequest) -> int:
    evaluation = table_evaluation(table.kind, table.protocol)
    steps = plan_steps(runs, evaluation)
    if not args.dry_run:  # what was asked, for `launch status`, the report and the next call
        save_request(runs_dir, request)
    report = runs_dir / REPORTS_DIR / f"{table_path.stem}.md"
    print(f"{table.title}: {len(runs)} runs in {runs_dir}")
    for step in steps:
        done = [what for what, state in (("trained", step.train), ("evaluated", step.evaluate)) if state == "done"]
        queued = [f"{what} (job {job})" for what, state, job in (("training", step.train, step.train_job),
                                                                ("evaluation", step.evaluate, step.eval_job))
                  if state == "queued"]
        if done or queued:
            print(f"  skip {step.name}: " + ", ".join(done + [q + " in the queue" for q in queued]))
    pending = any(s.train == "submit" or s.evaluate == "submit" for s in steps)
    if args.local and not pending and report_is_current(report, runs):
        print(f"nothing to do: every run is trained and evaluated; the report is {report}")
        return 0
    if args.local and args.dry_run:
        for step in steps:
            work = [what for what, state in (("train", step.train), ("evaluate", step.evaluate)) if state == "submit"]
            if work:
                print(f"would {' and '.join(work)} {step.name} here in {args.nproc} process(es)")
        print(f"would write {report}")
        return 0
    if args.local:
        return run_chain_locally(steps, evaluation, table_path, runs_dir, args.nproc)
    if not args.dry_run and not shutil.which("sbatch"):  # a dry run only prints: it needs no SLURM
        print("error: no SLURM here (sbatch not found); run the chain on this machine with --local --nproc N")
        return 2
    resources = resources_from_flags(args, runs[0].cfg.slurm)
    print_gpu_shares({s.name: s.run.cfg for s in steps if s.train == "submit"}, resources)
    if submit_chain(steps, evaluation, table_path, runs_dir, resources, args.array_parallelism or ARRAY_PARALLELISM,
                    args.dry_run):
        return 0
    if any(s.train == "queued" or s.evaluate == "queued" for s in steps) or _report_job_queued(runs_dir, table_path):
        print("nothing to submit: the rest is in the queue")
    elif report_is_current(report, runs):
        print(f"nothing to submit: every run is trained and evaluated; the report is {report}")
    elif not args.dry_run:
        for path in write_table_report(table_path, runs_dir):
            print(f"nothing to submit: every run is trained and evaluated; written: {path}")
    else:
        print(f"nothing to submit; would write {report}")
    return 0


def _report_job_file(runs_dir: Path, table_path: Path) -> Path:
    return runs_dir / REPORTS_DIR / f"{table_path.stem}.{JOB_ID_FILE}"


def _report_job_queued(runs_dir: Path, table_path: Path) -> bool:
    from launch.submit.queue import queue_state

    job = _recorded_job(_report_job_file(runs_dir, table_path))
    return job is not None and queue_state(job) is not None

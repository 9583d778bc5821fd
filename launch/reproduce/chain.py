"""What a table's runs still need, and the chain that does it: on SLURM, a training job array, an evaluation per run
that starts once its training has ended successfully, and a report once everything has ended; or the same, run
after run, on this machine. (`launch reproduce`, in `command`, decides which.)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from launch.reproduce.report_job import ReportJob, report_resources, write_table_report
from launch.submit.local import run_local, run_module_local, stopped_by_user
from launch.submit.queue import queue_entries
from launch.submit.run_status import IN_QUEUE, run_statuses
from launch.submit.slurm import make_executor, prepare_planned_run, submit_array, submit_evaluation
from pipeline.config import SlurmConfig
from pipeline.run.layout import RunDir, RunsFolder
from pipeline.run.results import protocol_result, read_layer_responses, read_results
from pipeline.tables.spec import PlannedRun, TableEvaluation


@dataclass
class RunStep:
    """What one run of the table still needs: training, evaluation, each done, in the queue or to submit."""

    run: PlannedRun
    train: str  # done | queued | submit
    train_job: str | None  # the job id of a training in the queue
    evaluate: str  # done | queued | submit | none (the table reads what training records)
    eval_job: str | None = None
    stale_eval_job: str | None = None  # an earlier evaluation of this run, replaced by the one submitted now

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def name(self) -> str:
        return f"{self.run.label}, seed {self.run.seed}"


def plan_steps(runs: list[PlannedRun], evaluation: TableEvaluation | None) -> list[RunStep]:
    # SLURM's queue asked twice in all (the trainings, then the evaluations), not twice a run.
    statuses = run_statuses([run.run_dir for run in runs])
    eval_jobs = [recorded_job(RunDir(run.run_dir).evaluation_job_id(evaluation.job_name)) if evaluation else None
                 for run in runs]
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


def recorded_job(path: Path) -> str | None:
    """The SLURM job id a file records, if there is one."""
    if not path.exists():
        return None
    return path.read_text().strip() or None


def _evaluated(run_dir: Path, evaluation: TableEvaluation) -> bool:
    """Whether the run has the evaluation, of its final weights (not of a checkpoint half-way through)."""
    results = read_results(run_dir)
    final_step = results.get("train", {}).get("step")
    found = read_layer_responses(run_dir) if evaluation.layer_responses else \
        protocol_result(results, evaluation.protocol)
    return found is not None and found.get("step") == final_step


def report_is_current(report: Path, runs: list[PlannedRun]) -> bool:
    """The report exists and is newer than every result it reads."""
    if not report.exists():
        return False
    written = report.stat().st_mtime
    sources = [path for run in runs for path in (RunDir(run.run_dir).results, RunDir(run.run_dir).layer_responses)]
    return all(not p.exists() or p.stat().st_mtime <= written for p in sources)


def _jobs_named(training: bool, evaluation: bool) -> str:
    """Which jobs the resources line speaks of: a table read from training's own records (a centre-view table,
    curves) has no evaluation jobs, and a call that only evaluates again submits no training."""
    kinds = [kind for kind, there in (("training", training), ("evaluation", evaluation)) if there]
    return f"each {' and '.join(kinds)} job"


def _after(kind: str, job_ids: list[str]) -> str | None:
    return f"{kind}:{':'.join(job_ids)}" if job_ids else None


# -- SLURM --------------------------------------------------------------------------------------------

def submit_chain(steps: list[RunStep], evaluation: TableEvaluation | None, table_path: Path, runs_dir: Path,
                 resources: SlurmConfig, array_parallelism: int, dry_run: bool) -> int:
    """Submit (or, dry, print) what `steps` still need and the report after them; returns the jobs submitted."""
    to_train = [s for s in steps if s.train == "submit"]
    to_evaluate = [s for s in steps if s.evaluate == "submit"]
    verb = "would submit" if dry_run else "submitted"
    submitted = 0
    if to_train or to_evaluate:
        gpus = f"{resources.gpus_per_node} GPU(s) per node" if resources.gpus_per_node else "no GPUs (CPU only)"
        print(f"{_jobs_named(bool(to_train), bool(to_evaluate))}: {resources.nodes} node(s) x "
              f"{resources.ntasks_per_node} task(s), {gpus}, {resources.time_minutes} min"
              + (f", partition {resources.partition}" if resources.partition else ""))
    if to_train:
        run_dirs = [s.run_dir if dry_run else prepare_planned_run(s.run) for s in to_train]
        if dry_run:
            ids = [f"train[{i}]" for i in range(len(to_train))]
        else:
            ids = [str(job.job_id) for job in submit_array(run_dirs, resources, table_path.stem,
                                                           RunsFolder(runs_dir).sweeps(table_path), array_parallelism)]
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
                RunDir(step.run_dir).evaluation_job_id(evaluation.job_name).write_text(step.eval_job)
            print(f"  {step.eval_job:<14} {step.name:<28} {f'afterok:{after}' if after else 'trained: starts now'}")
        submitted += len(to_evaluate)
    if submitted:
        awaited = [s.eval_job for s in steps if s.eval_job] if evaluation else \
            [s.train_job for s in steps if s.train_job]
        dependency = _after("afterany", awaited)
        report = RunsFolder(runs_dir).report(table_path)
        if dry_run:
            job_id = "report"
        else:
            report.parent.mkdir(parents=True, exist_ok=True)
            executor = make_executor(RunsFolder(runs_dir).report_jobs, report_resources(resources),
                                     f"report-{table_path.stem}")
            executor.update_parameters(dependency=dependency)
            job_id = str(executor.submit(ReportJob(table_path, runs_dir)).job_id)
            RunsFolder(runs_dir).report_job_id(table_path).write_text(job_id)
        print(f"report: {verb} job {job_id}, once every job above has ended ({dependency or 'now'}) -> {report}")
        submitted += 1
    return submitted


# -- this machine -------------------------------------------------------------------------------------

def run_chain_locally(steps: list[RunStep], evaluation: TableEvaluation | None, table_path: Path, runs_dir: Path,
                      nproc: int) -> int:
    """The same chain, here: train, evaluate, then report; a run that fails does not stop the others."""
    failed = []
    for step in steps:
        if step.train == "queued":
            print(f"skip {step.name}: its training is in the SLURM queue (job {step.train_job})")
            continue
        if step.train == "submit":
            print(f"train {step.name} in {nproc} process(es): {step.run_dir}", flush=True)
            code = run_local(str(RunDir(prepare_planned_run(step.run)).config), [], nproc)
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

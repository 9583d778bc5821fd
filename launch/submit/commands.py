"""The commands that start one run's work, each taking what its command line asked as a typed request:
`submit` (a training job), `local` (a training here, in N processes), `sweep` (a table's trainings as one job
array), `prep` (a data_prep job array) and `evaluate` (here, or as a SLURM job)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from data_prep.manifest import MANIFEST_NAME
from launch.submit.checks import check_prepared, check_startable, print_gpu_shares
from launch.submit.kill_wait import warn_of_slow_stops
from launch.submit.local import run_local, torchrun_command
from launch.submit.requests import EvaluateRequest, LocalRequest, PrepRequest, SubmitRequest, SweepRequest
from launch.submit.run_status import IN_QUEUE, run_status, run_statuses
from launch.submit.slurm import (
    make_executor,
    prepare_planned_run,
    prepare_run,
    sbatch_script,
    submission_lock,
    submit,
    submit_array,
    submit_evaluation,
    submit_prep_array,
)
from launch.submit.waiting import wait_for_job
from pipeline.config import SlurmConfig, config_to_yaml, load_config
from pipeline.dist.exit_codes import LOCKED, USAGE
from pipeline.evaluate.config import run_config
from pipeline.run.layout import RunDir, RunsFolder
from pipeline.tables.spec import planned_runs, unique_runs


def submit_training(request: SubmitRequest) -> int:
    """`launch submit`: one training job, unless the run is already in the queue."""
    cfg = load_config(request.config, request.overrides)  # refuse a bad config before anything is written
    resources = request.resources.applied_to(cfg.slurm)
    print_gpu_shares({cfg.run.name: cfg}, resources)
    run_dir = RunDir.of(cfg).path.resolve()
    if request.dry_run:
        print(f"# run directory: {run_dir}")
        print(sbatch_script(make_executor(RunDir(run_dir).slurm_logs, resources, cfg.run.name)))
        print("# resolved config")
        print(config_to_yaml(cfg))
        return 0
    check_startable(resources)  # a dry run shows what would be asked, wherever it runs
    warn_of_slow_stops([cfg])
    if not request.no_data_check:
        check_prepared([cfg])
    with submission_lock(run_dir.parent):
        status = run_status(run_dir)
        if status.state in IN_QUEUE:
            job = f" as SLURM job {status.job_id}" if status.job_id else ""
            cancel = f"`scancel {status.job_id}`" if status.job_id else "stop it"
            print(f"error: {run_dir} is already {status.state}{job}: a second job would be refused by the run's lock; "
                  f"wait for it, or {cancel} and submit again (it resumes from the latest checkpoint)",
                  file=sys.stderr)
            return LOCKED
        cfg, run_dir = prepare_run(request.config, request.overrides)
        job = submit(run_dir, resources, cfg.run.name)
    print(f"submitted job {job.job_id}: {cfg.run.name}")
    print(f"run directory: {run_dir}")
    return 0


def train_here(request: LocalRequest) -> int:
    """`launch local`: the training in N processes on this machine; its exit code is the ranks'."""
    load_config(request.config, request.overrides)  # fail here, once, rather than in every process
    return run_local(request.config, request.overrides, request.nproc)


def sweep(request: SweepRequest) -> int:
    """`launch sweep`: every run of a table that is neither finished nor queued, as one job array."""
    runs = unique_runs(planned_runs(request.table, request.runs, request.seeds, tuple(request.overrides),
                                    request.rows))
    # What is left to submit is decided and submitted under one lock: a second sweep at once waits, then skips.
    folder = runs[0].run_dir.resolve().parent
    with submission_lock(folder) if not request.dry_run else contextlib.nullcontext():
        todo = []
        for run, status in zip(runs, run_statuses([run.run_dir for run in runs])):
            if status.state in ("finished", *IN_QUEUE):
                print(f"skip {run.run_dir}: {status.state}")
            else:
                todo.append(run)
        if not todo:
            print(f"nothing to submit: all {len(runs)} runs of {request.table} are finished or in the queue")
            return 0
        resources = request.resources.applied_to(todo[0].cfg.slurm)
        print_gpu_shares({f"{run.label}, seed {run.seed}": run.cfg for run in todo}, resources)
        if request.dry_run:
            for run in todo:
                print(f"would submit {run.run_dir} ({run.label}, seed {run.seed})")
            return 0
        check_startable(resources)
        warn_of_slow_stops([run.cfg for run in todo])
        if not request.no_data_check:
            check_prepared([run.cfg for run in todo])
        run_dirs = [prepare_planned_run(run) for run in todo]
        jobs = submit_array(run_dirs, resources, Path(request.table).stem, RunsFolder(folder).sweeps(request.table),
                            request.array_parallelism)
    print(f"submitted job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} tasks for {request.table}")
    for run_dir, job in zip(run_dirs, jobs):
        print(f"  {job.job_id}: {run_dir}")
    return 0


def prep(request: PrepRequest) -> int:
    """`launch prep`: shard a dataset with a SLURM job array, each task a disjoint part."""
    prep_args = [a for a in request.prep_args if a != "--"]
    if "--out" not in prep_args:
        print("error: the data_prep arguments need --out DIR", file=sys.stderr)
        return USAGE
    out = Path(prep_args[prep_args.index("--out") + 1]).resolve()
    # A prep task is one CPU process: no GPU, one task a node, 4 CPUs unless the flags say otherwise.
    resources = request.resources.applied_to(SlurmConfig(gpus_per_node=0, tasks_per_node=1, cpus_per_task=4))
    check_startable(resources)
    jobs = submit_prep_array(prep_args, request.num_tasks, resources, out / "_slurm", request.array_parallelism)
    print(f"submitted data_prep job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} tasks into {out}")
    if request.wait:
        for job in jobs:
            wait_for_job(job, "prep")
        print(f"done: {out / MANIFEST_NAME}")
    return 0


def evaluate(request: EvaluateRequest) -> int:
    """`launch evaluate`: a run's evaluation here in N processes, or as a SLURM job."""
    run_dir = Path(request.run_dir).resolve()
    cfg = run_config(run_dir, request.overrides)  # refuse a directory that is not a run before anything starts
    if not request.slurm:
        flags = ["--protocol", request.protocol, "--checkpoint", request.checkpoint, *request.overrides] + \
            (["--layer-responses"] if request.layer_responses else [])
        return subprocess.run(torchrun_command("pipeline.evaluate", [str(run_dir), *flags], request.nproc)).returncode
    resources = request.resources.applied_to(cfg.slurm)
    check_startable(resources)
    job = submit_evaluation(run_dir, resources, request.protocol, request.checkpoint, request.layer_responses,
                            overrides=request.overrides)
    print(f"submitted evaluation job {job.job_id}: {run_dir} ({request.protocol}, checkpoint {request.checkpoint})")
    if request.wait:
        record = wait_for_job(job, "evaluate")[0]  # every task returns the same totals
        print(f"{record['split']} {record['protocol']} error: top-1 {record['top1_error']:.2f}%, "
              f"top-5 {record['top5_error']:.2f}% ({record['samples']} samples) -> {RunDir(run_dir).results}")
    return 0

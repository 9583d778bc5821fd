"""Training jobs on SLURM through submitit: one task per GPU, checkpoint and requeue on the SLURM signal.

The run directory is fixed before submission: the resolved config is written there and the job reads
it back, so a requeued job (which runs the same pickled callable again) finds the same directory and
resumes from its latest complete checkpoint.

Preemption and time limits: SLURM sends USR2 (`--signal=USR2@<delay>`, or `scancel --signal=USR2`) to
every task; the training loop notices it between steps, all ranks agree and save one consistent
checkpoint, and then rank 0 hands over to submitit's own handler, which requeues the job (counting
time-outs against `slurm.max_requeues`). SIGTERM (`scancel`, `scontrol requeue`, a preemption or a node
set DOWN, which SLURM requeues by itself) reaches every process of the job, W&B's service among them; it
also saves a checkpoint (W&B's failure is one warning), but the job does not requeue itself: a
cancelled job stays cancelled, one SLURM requeues comes back by itself, and running a cancelled one
again resumes from that checkpoint. A requeued job takes its run directory's lock back from its earlier
start (`pipeline.run.lock`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_prep.lock import FileLock, describe
from launch.submit.jobs import EvalJob, PrepTask, TrainJob
from launch.submit.waiting import explain_sacct_once
from pipeline.config import ExperimentConfig, SlurmConfig, load_config, save_config
from pipeline.run.continuity import check_continues
from pipeline.run.layout import RunDir, RunsFolder

SUBMISSION_WAIT_S = 600.0


def make_executor(folder: Path, resources: SlurmConfig, job_name: str, array_parallelism: int = 256):
    """A submitit SlurmExecutor asking for `resources`."""
    import submitit  # only when submitting: its import is not free, and `--help` needs none of it

    explain_sacct_once()
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=resources.max_requeues)
    params: dict[str, Any] = dict(
        job_name=job_name,
        time=resources.time_minutes,
        nodes=resources.nodes,
        ntasks_per_node=resources.ntasks_per_node,
        cpus_per_task=resources.cpus_per_task,
        signal_delay_s=resources.signal_delay_s,
        array_parallelism=array_parallelism,
        additional_parameters=dict(resources.additional),
        # A task that fails (a rank whose collective timed out waiting for a hung one: engine.hang_timeout_minutes)
        # ends the job step, the hung task included, instead of leaving it holding the job's GPUs until the limit.
        srun_args=["--kill-on-bad-exit=1"],
    )
    if resources.gpus_per_node > 0:
        params["gpus_per_node"] = resources.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(resources, key):
            params[key] = getattr(resources, key)
    if resources.mem_gb:
        params["mem"] = f"{resources.mem_gb}GB"
    if resources.exclusive:
        params["exclusive"] = True
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor) -> str:
    """The sbatch script submitit would submit with `executor` (for --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit: only where jobs are submitted or run

    return _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **executor.parameters)


@contextlib.contextmanager
def submission_lock(folder: Path) -> Iterator[None]:
    """Held while a `launch` command decides what to submit into `folder` (the runs it holds) and submits it.

    Deciding reads which runs are finished or in the queue, and submitting records their job ids; two
    commands doing both at once (two `reproduce` calls of one table) would each find nothing queued and
    submit every job twice. The second command waits for the first here (saying for whom, once), then
    finds the first one's jobs in the queue and skips them."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(RunsFolder(folder).submission_lock)

    def waiting(locked) -> None:
        print(f"waiting for another launch command submitting into {folder} ({describe(locked.holder)})",
              file=sys.stderr, flush=True)

    lock.acquire_waiting(SUBMISSION_WAIT_S, on_wait=waiting)
    lock.start_heartbeat()
    try:
        yield
    finally:
        lock.release()



def prepare_run(config: str, overrides: list[str]) -> tuple[ExperimentConfig, Path]:
    """Resolve the config and fix the run directory before anything is submitted."""
    cfg = load_config(config, overrides)
    run = RunDir(RunDir.of(cfg).path.resolve())
    cfg.run.out_dir = str(run.path.parent)  # absolute: the job may start in another working directory
    check_continues(run, cfg)  # a config its checkpoints cannot resume is refused before its config.yaml is replaced
    save_config(cfg, run.config)
    return cfg, run.path


def prepare_planned_run(run) -> Path:
    """Write a table run's resolved config into its (absolute) run directory before submission."""
    run_dir = RunDir(run.run_dir.resolve())
    run.cfg.run.out_dir = str(run_dir.path.parent)
    check_continues(run_dir, run.cfg)
    save_config(run.cfg, run_dir.config)
    return run_dir.path


def submit(run_dir: Path, resources: SlurmConfig, job_name: str):
    run = RunDir(run_dir)
    executor = make_executor(run.slurm_logs, resources, job_name)
    job = executor.submit(TrainJob(run_dir))
    run.slurm_job_id.write_text(str(job.job_id))
    return job


def submit_array(run_dirs: list[Path], resources: SlurmConfig, job_name: str, folder: Path,
                 array_parallelism: int) -> list:
    """One SLURM job array with a task per run; each task checkpoints and requeues on its own."""
    executor = make_executor(folder, resources, job_name, array_parallelism=array_parallelism)
    with executor.batch():
        jobs = [executor.submit(TrainJob(run_dir)) for run_dir in run_dirs]
    for run_dir, job in zip(run_dirs, jobs):
        RunDir(run_dir).slurm_job_id.write_text(str(job.job_id))
    return jobs


def submit_evaluation(run_dir: Path, resources: SlurmConfig, protocol: str, checkpoint: str,
                      layer_responses: bool, after: str | None = None, overrides: Sequence[str] = ()):
    """Submit an evaluation job; with `after` (a job id) it starts once that job has ended successfully.
    `overrides`: data.* and eval.* settings for this evaluation (`pipeline.evaluate`)."""
    executor = make_executor(RunDir(run_dir).slurm_logs / "eval", resources, f"eval-{protocol}-{run_dir.name}")
    if after:
        # A requeued job keeps its id, so the dependency holds across requeues; if the job fails instead,
        # SLURM removes this one rather than keeping it pending forever.
        executor.update_parameters(dependency=f"afterok:{after}",
                                   additional_parameters={**resources.additional, "kill_on_invalid_dep": "yes"})
    return executor.submit(EvalJob(run_dir, protocol, checkpoint, layer_responses, overrides,
                                   after_training=bool(after)))



def submit_prep_array(prep_args: list[str], num_tasks: int, resources: SlurmConfig, folder: Path,
                      array_parallelism: int) -> list:
    """Shard a dataset with a SLURM job array of `num_tasks` independent tasks."""
    executor = make_executor(folder, resources, "data_prep", array_parallelism=array_parallelism)
    with executor.batch():
        return [executor.submit(PrepTask(prep_args, num_tasks, i)) for i in range(num_tasks)]

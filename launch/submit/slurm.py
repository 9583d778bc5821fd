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
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from pipeline.config import ConfigError, ExperimentConfig, load_config, save_config
from pipeline.config.schema import SlurmConfig
from pipeline.run.state import JOB_ID_FILE  # the file with a run's SLURM job id, for `status`

SLURM_DIR = "slurm"  # submitit's job files and logs, inside the run directory
SUBMISSION_LOCK = ".launch-submit.lock"  # held while a launch command decides what to submit into a folder
SUBMISSION_WAIT_S = 600.0


@dataclass
class JobResources:
    """What one job asks SLURM for; defaults from the config's `slurm` section, flags override."""

    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: Optional[int] = None  # None: one task per GPU
    cpus_per_task: int = 8
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    mem_gb: Optional[int] = None
    time_minutes: int = 240
    exclusive: bool = False
    max_requeues: int = 20
    signal_delay_s: int = 120
    additional: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, slurm: SlurmConfig, **overrides: Any) -> "JobResources":
        base = cls(**{k: getattr(slurm, k) for k in cls.__dataclass_fields__})
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def gpus(self) -> int:
        """Ranks of one job: one per GPU (on CPU, per task)."""
        return self.nodes * self.ntasks_per_node


def print_gpu_shares(runs: Dict[str, ExperimentConfig], resources: JobResources) -> None:
    """What each GPU of each job gets of its run's batch, and warnings for runs spread too thin or whose
    schedule never lowers the rate (on stderr: stdout may be a dry run's sbatch script). `runs`: run name ->
    config; runs that share a batch or a warning are said once."""
    from pipeline.config.checks import schedule_warning
    from pipeline.config.per_gpu_batch import gpu_share

    by_share: Dict[str, List[str]] = {}
    warnings: Dict[str, List[str]] = {}
    for name, cfg in runs.items():
        share = gpu_share(cfg, resources.gpus)
        by_share.setdefault(share.describe(), []).append(name)
        for warning in filter(None, (share.below_recipe(), schedule_warning(cfg.schedule))):
            warnings.setdefault(warning, []).append(name)
    for text, names in by_share.items():
        print(f"per GPU: {text}" + (f" ({len(names)} runs)" if len(runs) > 1 else ""), file=sys.stderr)
    for text, names in warnings.items():
        who = f"{names[0]}" if len(names) == 1 else f"{len(names)} runs ({', '.join(names)})"
        print(f"warning: {who}: {text}", file=sys.stderr)


def check_prepared(cfgs: Sequence[ExperimentConfig]) -> None:
    """Refuse jobs whose dataset is not there (they would fail at their start, after their wait in the queue).
    Where the data is seen by the compute nodes alone (a node-local copy), `--no-data-check` skips this."""
    from pipeline.data.dataset import DatasetError, read_manifest

    for root in dict.fromkeys(cfg.data.root for cfg in cfgs if cfg.data.backend != "synthetic"):
        try:
            read_manifest(root)
        except DatasetError as e:
            raise ConfigError(f"data.root: {e}; nothing was submitted (data the compute nodes alone see: "
                              "--no-data-check)") from e


def check_startable(resources: JobResources) -> None:
    """Refuse a job its partition can never run (`launch.submit.partition`), naming each resource and its limit."""
    from launch.submit.partition import impossible, read_partition

    partition = read_partition(resources.partition)
    if partition is None:
        return
    problems = impossible(partition, resources.nodes, resources.ntasks_per_node, resources.cpus_per_task,
                          resources.gpus_per_node, resources.mem_gb, resources.time_minutes)
    if problems:
        raise ConfigError("this job could never start: it asks " + "; ".join(problems) +
                          ". Nothing was submitted; ask for less (the flags named), or another --partition")


def resource_flags(args: Any) -> List[str]:
    """The resource flags given on a command line (`args`: the parsed arguments), as flags again."""
    flags: List[str] = []
    for name in JobResources.__dataclass_fields__:
        value = getattr(args, name, None)
        if name == "additional" or value is None or value is False:
            continue
        flag = "--time" if name == "time_minutes" else "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    for item in getattr(args, "sbatch", None) or []:
        flags += ["--sbatch", item]
    return flags


def resources_from_flags(flags: Any, slurm: SlurmConfig) -> JobResources:
    """The resources of a job: the config's `slurm` section, overridden by the command line's resource flags
    (`flags`: the parsed arguments; absent or None flags keep the config's value; `--sbatch KEY=VALUE` adds)."""
    names = [f for f in JobResources.__dataclass_fields__ if f != "additional"]
    resources = JobResources.from_config(slurm, **{n: getattr(flags, n, None) for n in names})
    for item in getattr(flags, "sbatch", None) or []:
        key, _, value = item.partition("=")
        resources.additional[key.replace("-", "_")] = value
    return resources


def make_executor(folder: Path, resources: JobResources, job_name: str, array_parallelism: int = 256):
    """A submitit SlurmExecutor asking for `resources`."""
    import submitit  # heavy-ish; only when submitting

    from launch.submit.waiting import explain_sacct_once

    explain_sacct_once()
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=resources.max_requeues)
    params: Dict[str, Any] = dict(
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
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **executor.parameters)


@contextlib.contextmanager
def submission_lock(folder: Path) -> Iterator[None]:
    """Held while a `launch` command decides what to submit into `folder` (the runs it holds) and submits it.

    Deciding reads which runs are finished or in the queue, and submitting records their job ids; two
    commands doing both at once (two `reproduce` calls of one table) would each find nothing queued and
    submit every job twice. The second command waits for the first here (saying for whom, once), then
    finds the first one's jobs in the queue and skips them."""
    from data_prep.lock import FileLock, describe

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / SUBMISSION_LOCK)

    def waiting(locked) -> None:
        print(f"waiting for another launch command submitting into {folder} ({describe(locked.holder)})",
              file=sys.stderr, flush=True)

    lock.acquire_waiting(SUBMISSION_WAIT_S, on_wait=waiting)
    lock.start_heartbeat()
    try:
        yield
    finally:
        lock.release()


class TrainJob:
    """The callable a SLURM job runs: train the run whose config lies in `run_dir`, resume if it can.

    submitit treats an object with a `checkpoint` method as checkpointable: on requeue it runs the
    object `checkpoint` returns; here that is the same job, since all state lives in the run directory.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> dict:
        from pipeline.dist import dist_info_from_env
        from pipeline.train.loop import say_error, train

        cfg = load_config(Path(self.run_dir) / "config.yaml")
        info = dist_info_from_env()
        try:
            # The job id is recorded once the run directory is this job's (a start refused by its lock writes
            # nothing).
            result = train(cfg, info, on_start=lambda: _record_job_id(Path(self.run_dir)))
        except Exception as e:
            # The same `error:` line as `launch local` gives (what `launch status` shows); the job still fails
            # through submitit, whose traceback follows in the log.
            say_error(e, info.is_primary)
            raise
        if result.get("interrupted") and result.get("signal") != "SIGTERM":
            # The checkpoint is saved; let submitit's handler (restored when training returned)
            # requeue the job on rank 0. Other ranks return and the requeued job starts them again.
            # Not on SIGTERM: that is what `scancel` sends (and what a cluster that requeues preempted
            # jobs itself sends); requeueing then would bring back a job its user cancelled.
            handler = signal.getsignal(signal.SIGUSR2)
            if callable(handler):
                handler(signal.SIGUSR2, None)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))


class EvalJob:
    """The callable of an evaluation job: `pipeline.evaluate` on every task of the job.

    Evaluation writes nothing until it has its result, so a preempted job simply runs again.
    """

    def __init__(self, run_dir: str | Path, protocol: str, checkpoint: str, layer_responses: bool,
                 overrides: Sequence[str] = ()) -> None:
        # Not `self.checkpoint`: that name is the method submitit calls when the job is preempted.
        self.run_dir, self.protocol, self.which_checkpoint = str(run_dir), protocol, checkpoint
        self.layer_responses, self.overrides = layer_responses, list(overrides)

    def __call__(self) -> dict:
        from pipeline.evaluate.job import evaluate_run

        return evaluate_run(Path(self.run_dir), self.protocol, self.which_checkpoint,
                            layer_responses=self.layer_responses, overrides=self.overrides)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def submit_evaluation(run_dir: Path, resources: JobResources, protocol: str, checkpoint: str,
                      layer_responses: bool, after: Optional[str] = None, overrides: Sequence[str] = ()):
    """Submit an evaluation job; with `after` (a job id) it starts once that job has ended successfully.
    `overrides`: data.* and eval.* settings for this evaluation (`pipeline.evaluate`)."""
    executor = make_executor(run_dir / SLURM_DIR / "eval", resources, f"eval-{protocol}-{run_dir.name}")
    if after:
        # A requeued job keeps its id, so the dependency holds across requeues; if the job fails instead,
        # SLURM removes this one rather than keeping it pending forever.
        executor.update_parameters(dependency=f"afterok:{after}",
                                   additional_parameters={**resources.additional, "kill_on_invalid_dep": "yes"})
    return executor.submit(EvalJob(run_dir, protocol, checkpoint, layer_responses, overrides))


def prepare_run(config: str, overrides: List[str]) -> tuple[ExperimentConfig, Path]:
    """Resolve the config and fix the run directory before anything is submitted."""
    from pipeline.train.loop import run_dir_of

    cfg = load_config(config, overrides)
    run_dir = run_dir_of(cfg).resolve()
    cfg.run.out_dir = str(run_dir.parent)  # absolute: the job may start in another working directory
    save_config(cfg, run_dir / "config.yaml")
    return cfg, run_dir


def prepare_planned_run(run) -> Path:
    """Write a table run's resolved config into its (absolute) run directory before submission."""
    run_dir = run.run_dir.resolve()
    run.cfg.run.out_dir = str(run_dir.parent)
    save_config(run.cfg, run_dir / "config.yaml")
    return run_dir


def submit(run_dir: Path, resources: JobResources, job_name: str):
    executor = make_executor(run_dir / SLURM_DIR, resources, job_name)
    job = executor.submit(TrainJob(run_dir))
    (run_dir / JOB_ID_FILE).write_text(str(job.job_id))
    return job


def _record_job_id(run_dir: Path) -> None:
    """Write this job's SLURM id (`<array job>_<task>` for an array task) beside the run, for `status`."""
    import submitit

    (run_dir / JOB_ID_FILE).write_text(submitit.JobEnvironment().job_id)


def submit_array(run_dirs: List[Path], resources: JobResources, job_name: str, folder: Path,
                 array_parallelism: int) -> list:
    """One SLURM job array with a task per run; each task checkpoints and requeues on its own."""
    executor = make_executor(folder, resources, job_name, array_parallelism=array_parallelism)
    with executor.batch():
        jobs = [executor.submit(TrainJob(run_dir)) for run_dir in run_dirs]
    for run_dir, job in zip(run_dirs, jobs):
        (run_dir / JOB_ID_FILE).write_text(str(job.job_id))
    return jobs


class PrepTask:
    """One task of a data_prep job array: its part of the shards (the last task to finish merges)."""

    def __init__(self, prep_args: List[str], num_tasks: int, task_id: int) -> None:
        self.prep_args, self.num_tasks, self.task_id = list(prep_args), num_tasks, task_id

    def __call__(self) -> int:
        from data_prep.__main__ import main

        # submitit ignores SIGTERM in the job's process; data_prep's worker processes would inherit that
        # and could then never be stopped by their pool. Workers get the default back.
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            code = main([*self.prep_args, "--num-tasks", str(self.num_tasks), "--task-id", str(self.task_id),
                         "--no-progress"])
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code != 0:
            raise RuntimeError(f"data_prep task {self.task_id} of {self.num_tasks} failed with exit code {code}")
        return code


def submit_prep_array(prep_args: List[str], num_tasks: int, resources: JobResources, folder: Path,
                      array_parallelism: int) -> list:
    """Shard a dataset with a SLURM job array of `num_tasks` independent tasks."""
    executor = make_executor(folder, resources, "data_prep", array_parallelism=array_parallelism)
    with executor.batch():
        return [executor.submit(PrepTask(prep_args, num_tasks, i)) for i in range(num_tasks)]

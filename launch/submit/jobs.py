"""The callables SLURM jobs run: a training, an evaluation, a task of a data_prep array.

submitit pickles the callable by its module path and runs it in the job (and again, through `checkpoint`, after
a requeue): keep these small, with plain attributes, so that a job queued by one version still runs after an
upgrade (`launch.slurm` keeps the path of earlier versions). Everything else a job needs is read from the run
directory when it starts.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.__main__ import main
from pipeline.config import load_config
from pipeline.run.layout import RunDir
from pipeline.run.results import read_results
from pipeline.train.outcome import Interrupted  # plain data, no torch


class TrainJob:
    """The callable a SLURM job runs: train the run whose config lies in `run_dir`, resume if it can.

    submitit treats an object with a `checkpoint` method as checkpointable: on requeue it runs the
    object `checkpoint` returns; here that is the same job, since all state lives in the run directory.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> dict:
        from pipeline.dist import dist_info_from_env  # noqa: PLC0415 - the trainer: only in the job
        from pipeline.train.loop import say_error, train  # noqa: PLC0415 - the trainer: only in the job

        run = RunDir(self.run_dir)
        cfg = load_config(run.config)
        info = dist_info_from_env()
        try:
            # The job id is recorded once the run directory is this job's (a start refused by its lock writes
            # nothing).
            outcome = train(cfg, info, on_start=lambda: record_job_id(run))
        except Exception as e:
            # The same `error:` line as `launch local` gives (what `launch status` shows); the job still fails
            # through submitit, whose traceback follows in the log.
            say_error(e, info.is_primary)
            raise
        if isinstance(outcome, Interrupted):
            requeue = outcome.signal != "SIGTERM"
            say_stopped(outcome, requeue, info.is_primary)
            if requeue:
                # The checkpoint is saved; let submitit's handler (restored when training returned)
                # requeue the job on rank 0. Other ranks return and the requeued job starts them again.
                # Not on SIGTERM: that is what `scancel` sends (and what a cluster that requeues preempted
                # jobs itself sends); requeueing then would bring back a job its user cancelled.
                handler = signal.getsignal(signal.SIGUSR2)
                if callable(handler):
                    handler(signal.SIGUSR2, None)
        return outcome.as_dict()  # the job's result: plain data, readable by any version

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit  # submitit: only where jobs are submitted or run

        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))


def say_stopped(outcome: Interrupted, requeue: bool, requeues_here: bool) -> None:
    """A stopped training says so in its job's log (every rank, each in its own), and submitit's "Job completed
    successfully" after it says "stopped" instead.

    The job still returns, with exit code 0: srun runs the ranks with --kill-on-bad-exit, so a rank that exited
    non-zero before rank 0 had requeued the job would kill rank 0 first, and the job would not come back. SLURM's
    state says what stopped it (docs/reliability.md#how-a-stopped-job-ends). `requeues_here`: this is the rank
    on which submitit's handler requeues the job.
    """
    by = f"by {outcome.signal}" if outcome.signal else "by a signal to another rank"
    if not requeue:
        then = ("not requeued by the job (a cancelled job stays cancelled): SLURM brings back a job it preempted, "
                "and submitting the run again resumes it")
    elif requeues_here:
        then = "requeueing the job, which resumes from it"
    else:
        then = "rank 0 requeues the job, which resumes from it"
    line = f"stopped {by} at step {outcome.step}: checkpoint saved; {then}"
    print(line, flush=True)
    logging.getLogger("submitit").addFilter(_StoppedNotCompleted(outcome.step))


class _StoppedNotCompleted(logging.Filter):
    """submitit says "Job completed successfully" of whatever the callable returned: after a stop, the truth."""

    SAID = {"Job completed successfully": "Job stopped at step {step}, not completed (see the line above)",
            "Exiting after successful completion": "Exiting after the stop"}

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def filter(self, record: logging.LogRecord) -> bool:
        said = self.SAID.get(record.getMessage())
        if said is not None:
            record.msg, record.args = said.format(step=self.step), ()
        return True


def record_job_id(run: RunDir) -> None:
    """Write this job's SLURM id (`<array job>_<task>` for an array task) beside the run, for `status`."""
    import submitit  # submitit: only where jobs are submitted or run

    run.slurm_job_id.write_text(submitit.JobEnvironment().job_id)


class TrainingNotFinished(RuntimeError):
    """An evaluation that waits for its run's training found it stopped, not finished."""


class EvalJob:
    """The callable of an evaluation job: `pipeline.evaluate` on every task of the job.

    Evaluation writes nothing until it has its result, so a preempted job simply runs again. One that waits for
    its run's training (`after_training`, `reproduce`'s) evaluates only a finished training: a training stopped
    by `scancel --signal=TERM` ends its job successfully (it saved, and exits 0 on every rank, see
    `say_stopped`), which lets the evaluation start; it then says so in one line and fails, rather than
    recording the unfinished net's result as the run's.
    """

    def __init__(self, run_dir: str | Path, protocol: str, checkpoint: str, layer_responses: bool,
                 overrides: Sequence[str] = (), after_training: bool = False) -> None:
        # Not `self.checkpoint`: that name is the method submitit calls when the job is preempted.
        self.run_dir, self.protocol, self.which_checkpoint = str(run_dir), protocol, checkpoint
        self.layer_responses, self.overrides = layer_responses, list(overrides)
        self.after_training = after_training

    def __call__(self) -> dict:
        from pipeline.evaluate.job import evaluate_run  # noqa: PLC0415 - loads torch: only in the job

        # (Jobs queued by earlier versions were pickled without `after_training`.)
        if getattr(self, "after_training", False) and "train" not in read_results(Path(self.run_dir)):
            message = (f"{self.run_dir}: its training stopped before finishing (no training result in its "
                       "results.json): not evaluated; `launch reproduce` again resumes the training, then evaluates")
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise TrainingNotFinished(message)
        return evaluate_run(Path(self.run_dir), self.protocol, self.which_checkpoint,
                            layer_responses=self.layer_responses, overrides=self.overrides)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit  # submitit: only where jobs are submitted or run

        return submitit.helpers.DelayedSubmission(self)


class PrepTask:
    """One task of a data_prep job array: its part of the shards (the last task to finish merges)."""

    def __init__(self, prep_args: list[str], num_tasks: int, task_id: int) -> None:
        self.prep_args, self.num_tasks, self.task_id = list(prep_args), num_tasks, task_id

    def __call__(self) -> int:
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

"""What a SLURM job's log says when its training was stopped: our own line with the step and what comes next, and
submitit's "Job completed successfully" after it turned into "stopped" (the job itself runs in test_slurm.py); and
the evaluation that waits for a training refusing one that stopped before finishing."""

from __future__ import annotations

import logging

import pytest

from launch.submit.jobs import EvalJob, TrainingNotFinished, _StoppedNotCompleted, say_stopped
from pipeline.train.outcome import Interrupted


@pytest.fixture
def submitit_log(caplog):
    """submitit's logger as the job's log sees it; the filters a test installs are removed after it."""
    log = logging.getLogger("submitit")
    before = list(log.filters)
    caplog.set_level(logging.INFO, logger="submitit")
    yield log, caplog
    log.filters[:] = before


@pytest.mark.parametrize("signal, requeue, here, then", [
    ("SIGTERM", False, True, "not requeued by the job (a cancelled job stays cancelled)"),
    ("SIGUSR2", True, True, "requeueing the job, which resumes from it"),
    (None, True, False, "rank 0 requeues the job, which resumes from it"),
])
def test_a_stopped_job_says_so_and_submitit_does_not_say_completed(submitit_log, capsys, signal, requeue, here,
                                                                     then):
    log, caplog = submitit_log
    say_stopped(Interrupted(step=40, signal=signal), requeue, here)
    by = signal or "a signal to another rank"
    assert capsys.readouterr().out.startswith(f"stopped by {by} at step 40: checkpoint saved; {then}")
    log.info("Job completed successfully")  # what submitit's process_job says once the callable returned
    log.info("Exiting after successful completion")
    log.info("Loading pickle: %s", "x")  # any other line is left as it is
    assert caplog.messages == ["Job stopped at step 40, not completed (see the line above)", "Exiting after the stop",
                               "Loading pickle: x"]
    assert sum(isinstance(f, _StoppedNotCompleted) for f in log.filters) == 1


def test_an_evaluation_after_training_refuses_a_training_that_stopped_before_finishing(tmp_path, capsys):
    """`scancel --signal=TERM` ends a training job successfully (it saved): `reproduce`'s evaluation, which waits
    for it with afterok, then starts on an unfinished run. It says so and fails, recording nothing."""
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    with pytest.raises(TrainingNotFinished):
        EvalJob(run_dir, "tencrop", "last", False, after_training=True)()
    assert capsys.readouterr().err.startswith(f"error: {run_dir}: its training stopped before finishing")
    assert not (run_dir / "results.json").exists()

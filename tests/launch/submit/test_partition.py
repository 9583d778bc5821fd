"""Jobs that can never start are refused before submission, naming the resource and the limit; a waiting job
shows SLURM's reason in `launch status`. On the real minicluster (2 nodes of 2 CPUs) where it is up."""

import subprocess
import sys

import pytest

from launch.submit import queue
from launch.submit.partition import Partition, _gpus, _minutes, impossible
from launch.submit.run_status import run_statuses
from pipeline.run.layout import RunDir
from tests.support import DEMO_CONFIG, REPO
from tests.support.slurm import require_minicluster, submit
from tests.support.training import small_run


def test_sinfo_columns_are_read():
    assert [_minutes(t) for t in ("infinite", "30:00", "4:00:00", "1-00:00:00", "2-12:30:00", "90")] == \
        [None, 30, 240, 1440, 3630, 90]
    assert [_gpus(g) for g in ("(null)", "gpu:8", "gpu:a100:4(S:0-1)", "gpu:a100:4,gpu:v100:2")] == [0, 8, 4, 6]


def test_what_a_job_asks_beyond_its_partition_is_each_named():
    small = Partition("debug", nodes=2, cpus_per_node=2, memory_mb=23081, gpus_per_node=0, time_limit_minutes=60)
    assert impossible(small, 2, 2, 1, 0, None, 60) == []
    assert impossible(small, 3, 2, 8, 1, 64, 120) == [
        "3 nodes (--nodes): partition debug has 2",
        "16 CPUs a node (2 task(s) x --cpus-per-task 8): the nodes of partition debug have 2",
        "1 GPUs a node (--gpus-per-node): the nodes of partition debug have 0",
        "64 GB of memory a node (--mem-gb): the nodes of partition debug have 23",
        "120 minutes (--time): partition debug allows 60"]


@pytest.mark.slurm
def test_a_job_the_minicluster_cannot_run_is_refused_and_a_waiting_one_shows_why(digits_dataset, tmp_path):
    require_minicluster()
    # The configs' default of 8 CPUs per task, on nodes of 2: SLURM would keep it pending for ever.
    proc = subprocess.run([sys.executable, "-m", "launch", "submit", DEMO_CONFIG, f"data.root={digits_dataset}",
                           f"run.out_dir={tmp_path}", "--gpus-per-node", "0", "--tasks-per-node", "1"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: this job could never start: it asks 8 CPUs a node (1 task(s) x --cpus-per-task 8): the nodes " \
           "of partition debug have 2" in proc.stderr
    assert not tmp_path.joinpath("digits-resnet14").exists()  # nothing written, nothing queued

    # A job that can start, held until later: `status` shows SLURM's reason for the wait.
    run_dir = tmp_path / "t"
    job = submit(run_dir, small_run(digits_dataset, tmp_path), "--gpus-per-node", "0", "--tasks-per-node", "1",
                 "--cpus-per-task", "1", "--sbatch", "begin=now+1hour")
    # Beside it, the task of an array held by its user, and a job that has left the queue: one `squeue` for all.
    array = subprocess.run(["sbatch", "--parsable", "--array=0-2", "--hold", "-o", "/dev/null", "--wrap", "true"],
                           capture_output=True, text=True, check=True).stdout.strip()
    for name, job_id in (("task", f"{array}_1"), ("gone", "999999999")):  # the last: no such job in the queue
        (tmp_path / name).mkdir()
        RunDir(tmp_path / name).slurm_job_id.write_text(job_id)
    squeues, real_run = [], subprocess.run

    def counted(argv, **kwargs):
        if argv[0] == "squeue":
            squeues.append(argv)
        return real_run(argv, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(queue.subprocess, "run", counted)  # counts the calls; the real squeue answers
            statuses = run_statuses([run_dir, tmp_path / "task", tmp_path / "gone"])
        assert [(s.state, s.reason) for s in statuses] == [
            ("queued", "BeginTime"), ("queued", "JobHeldUser"),
            ("not started", "job 999999999 left the queue without a log")], statuses  # never ran: not "failed"
        assert len(squeues) == 1, squeues
    finally:
        subprocess.run(["scancel", job, array], check=True)


def test_submitits_sacct_warning_is_said_once_in_words(capsys):
    import logging

    from launch.submit import waiting

    waiting.explain_sacct_once()
    waiting.explain_sacct_once()  # installed once however often executors are made
    said_before = waiting._SacctSaidOnce.said
    waiting._SacctSaidOnce.said = False
    try:
        log = logging.getLogger("submitit")
        for call in range(3):
            log.warning(f"Call #{call} - Bypassing sacct error Command '['sacct']' returned non-zero exit status 1., "
                        "status may be inaccurate.")
        err = capsys.readouterr().err
        assert err.count(waiting.SACCT_SAID) == 1 and "Bypassing" not in err, err
    finally:
        waiting._SacctSaidOnce.said = said_before

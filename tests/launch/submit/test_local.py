"""`python -m launch local` for real: Ctrl-C makes the ranks save and stop, a second Ctrl-C kills them, none is
left; a second start into the same run directory is refused while the first runs. W&B is offline, as users run."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from data_prep.lock import FileLock, holder_info, read_lock
from pipeline.checkpoint.store import CheckpointStore
from pipeline.dist.exit_codes import HUNG, LOCKED
from pipeline.dist.exit_codes import INTERRUPTED as EXIT_INTERRUPTED
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics
from tests.support import DEMO_CONFIG, REPO
from tests.support.training import env, small_run
from tests.support.wandb_offline import offline_runs

pytestmark = pytest.mark.slow


def launch_local(overrides: list[str], log: Path) -> subprocess.Popen:
    """The launcher in a session of its own, as a terminal runs it: its process group is what Ctrl-C signals."""
    return subprocess.Popen([sys.executable, "-m", "launch", "local", DEMO_CONFIG, *overrides, "--nproc", "2"],
                            cwd=REPO, env=env(), start_new_session=True, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the launcher ended (code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def processes_of(marker: str) -> list[str]:
    """Every process whose command line mentions `marker` (the test's own directory: only this run's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # it ended while we looked
        if any(marker.encode() in a for a in args) and int(cmdline.parent.name) != os.getpid():
            found.append(f"{cmdline.parent.name}: {b' '.join(args)[:200].decode(errors='replace')}")
    return found


def assert_none_left(marker: str, grace_s: float = 10) -> None:
    """None of the run's processes outlives its launcher (a rank's helpers get a moment to notice)."""
    deadline = time.monotonic() + grace_s
    while processes_of(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_of(marker), f"left behind: {processes_of(marker)}"


@contextlib.contextmanager
def launched(overrides: list[str], log: Path, out: Path) -> Iterator[subprocess.Popen]:
    """`launch_local` for the test's body; after it, whatever happened, nothing of the run is left."""
    proc = launch_local(overrides, log)
    try:
        yield proc
    finally:
        kill_leftovers(str(out))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def kill_leftovers(marker: str) -> None:
    """Whatever happened, take nothing of this run past the test (these machines are shared)."""
    for line in processes_of(marker):
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def training_steps(run_dir: Path) -> Callable[[], bool]:
    return lambda: any("loss" in m for m in read_metrics(run_dir))


def overrides_of(digits_dataset: Path, out: Path, *extra: str) -> list[str]:
    # Far more steps than any test waits for: only a signal ends this run.
    return small_run(digits_dataset, out, "logging.wandb_mode=offline", "schedule.total=100000",
                     "schedule.milestones=[90000]", "checkpoint.every_steps=0", *extra)


def test_ctrl_c_saves_a_checkpoint_stops_every_rank_and_the_run_resumes(digits_dataset, tmp_path):
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "t"
    overrides = overrides_of(digits_dataset, out)
    with launched(overrides, tmp_path / "launch.log", out) as proc:
        wait_for(training_steps(run_dir), "training step", proc)
        # The same command again, while the first trains: refused with one line naming it, writing nothing.
        lock_before = (run_dir / "run.lock").read_bytes()
        holder = json.loads(lock_before)
        config_before = (run_dir / "config.yaml").read_bytes()
        second = subprocess.run([sys.executable, "-m", "launch", "local", DEMO_CONFIG, *overrides, "--nproc", "2"],
                                cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == LOCKED, second.stderr[-4000:]
        assert "Traceback" not in second.stderr and second.stdout == ""
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {holder['pid']}" in errors[0] and "already being trained" in errors[0]
        assert second.stderr.strip() == errors[0], second.stderr  # nothing else either: no agent log, no rank's
        assert (run_dir / "config.yaml").read_bytes() == config_before
        assert (run_dir / "run.lock").read_bytes() == lock_before  # the first one's still (its heartbeat: the mtime)
        assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1  # no W&B run of its own
        assert proc.poll() is None  # the first one trains on
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        code = proc.wait(timeout=180)
        log = (tmp_path / "launch.log").read_text()
        assert code == EXIT_INTERRUPTED, log[-4000:]
        assert_none_left(str(out))

    stops = [m for m in read_metrics(run_dir) if m.get("event") == "stopped by SIGTERM"]
    assert len(stops) == 1, log[-4000:]
    step = stops[0]["step"]
    assert 0 < step < 100000
    checkpoint = run_dir / "checkpoints" / f"step-{step:09d}"
    assert json.loads((checkpoint / "COMPLETE").read_text())["step"] == step
    assert {"rank-00000.pt", "rank-00001.pt", "state.pt"} <= {p.name for p in checkpoint.iterdir()}
    assert not RunDir(run_dir).exports.exists()  # an interrupted training logs no model

    # The same command resumes there (told to end sooner, so that the test ends).
    again = subprocess.run([sys.executable, "-m", "launch", "local", DEMO_CONFIG, *overrides,
                            f"schedule.total={step + 4}", "--nproc", "2"],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"from step {step}" in again.stderr
    assert "FutureWarning" not in again.stderr, again.stderr  # DDP's broadcast_buffers (torch 2.13) no longer
    assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == step + 4
    # One training wrote this directory at a time: every step logged once, in order, one W&B run.
    steps = [m["step"] for m in read_metrics(run_dir) if "loss" in m]
    assert steps == sorted({*range(2, step + 5, 2), step + 4})  # every 2 steps, and the last (the stop's is any)
    runs = offline_runs(run_dir)
    assert len({r.run_id for r in runs}) == 1 and not (run_dir / "run.lock").exists()
    # The finished training's net, exported and logged as the W&B run's model artifact, by the second start alone.
    (logged,) = [m for m in read_metrics(run_dir) if m.get("event") == "model artifact"]
    export = RunDir(run_dir).export(step + 4)
    assert (logged["step"], logged["model_artifact"], logged["model_export"]) == (step + 4, f"model-t:step-{step + 4}",
                                                                                    str(export))
    assert json.loads((export / "model.json").read_text())["source"]["step"] == step + 4
    assert [a for r in runs[:-1] for a in r.artifacts] == []
    (artifact,) = runs[-1].artifacts
    assert (artifact.name, artifact.type, artifact.metadata["step"]) == ("model-t", "model", step + 4)
    assert {"step-" + str(step + 4), "final"} <= set(artifact.aliases)
    assert artifact.files["model.safetensors"] == str(export / "model.safetensors") and "model.json" in artifact.files
    assert artifact.metadata["check"]["passed"] and artifact.metadata["architecture"]["name"] == "cifar_resnet8"


def test_a_second_ctrl_c_kills_every_rank_at_once(digits_dataset, tmp_path):
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "t"
    log = tmp_path / "launch.log"
    # Ranks that would take long to reach a save: the second Ctrl-C must not wait for it.
    with launched(overrides_of(digits_dataset, out, "checkpoint.check_every_steps=100000",
                               "checkpoint.check_every_seconds=100000"), log, out) as proc:
        wait_for(training_steps(run_dir), "training step", proc)
        os.killpg(proc.pid, signal.SIGINT)
        # Two signals at the same instant may reach the launcher as one: the second follows the first's reply.
        wait_for(lambda: "Ctrl-C again" in log.read_text(), "reply to the first Ctrl-C", proc, timeout=60)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        assert code == 128 + signal.SIGINT, log.read_text()[-4000:]
        assert_none_left(str(out))
    assert not any("stopped by" in str(m.get("event")) for m in read_metrics(run_dir))


def test_a_rank_stopped_by_sigstop_ends_the_run_within_the_hang_timeout_and_the_next_start_resumes(digits_dataset,
                                                                                                  tmp_path):
    """A hung rank (SIGSTOP: alive, silent, no error from the backend) mid-training: the other makes no progress, and
    after engine.hang_timeout_minutes the project's watchdog ends it, as it would on NCCL: one line, the run lock
    released, exit code HUNG; the same command resumes from the last checkpoint at once. The backend's own timeout
    is 2 minutes longer (it would say "a collective waited ..." instead). W&B offline, as by default.
    The stopped rank is left to torch's agent, which SIGKILLs it 30 s after the others ended (its grace for a
    SIGTERM that a stopped process cannot act on): the launcher then ends, and leaves nothing behind."""
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "t"
    hang_timeout_s = 12
    overrides = overrides_of(digits_dataset, out, f"engine.hang_timeout_minutes={hang_timeout_s / 60}",
                             "checkpoint.every_steps=8")
    log = tmp_path / "launch.log"
    with launched(overrides, log, out) as proc:
        first = run_dir / "checkpoints" / f"step-{8:09d}" / "COMPLETE"
        wait_for(first.exists, "first checkpoint", proc)
        hung = json.loads((run_dir / "ranks" / "rank-00001.json").read_text())["pid"]
        os.kill(hung, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: "(engine.hang_timeout_minutes)" in log.read_text(), "the watchdog's line", proc, timeout=600)
        took = time.monotonic() - stopped_at
        code = proc.wait(timeout=600)
        text = log.read_text()
        assert code == HUNG, text[-4000:]
        assert_none_left(str(out))
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no progress for {hang_timeout_s / 60:g} min (engine.hang_timeout_minutes)" in \
        errors[0], text
    assert "Traceback" not in text, text[-4000:]
    # The primary released the lock on its way out: a resubmission from another host is not kept waiting.
    assert not (run_dir / "run.lock").exists()
    # The hang timeout; the rest is this machine's slack (a timing bound on purpose: the failure it guards against
    # is the backend's timeout, 2 minutes longer, or its 30-min default).
    assert took < hang_timeout_s + 60, took

    complete = CheckpointStore(run_dir / "checkpoints").latest()
    again = subprocess.run([sys.executable, "-m", "launch", "local", DEMO_CONFIG, *overrides,
                            f"schedule.total={complete.step + 4}", "--nproc", "2"],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"from step {complete.step}" in again.stderr and "taking over the stale lock" not in again.stderr


def _stopped(group: int) -> bool:
    """Every process of process group `group` is stopped (SIGSTOP delivered: state T)."""
    states = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            states.append(fields[0])
    return bool(states) and all(state in "tTZ" for state in states)  # a zombie has nothing left to stop


def _written(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of the run directory with its size and mtime, but W&B's folder (this start's own: its service
    process writes there) and what a background save was writing when the job stopped (its thread finishes the
    file it has; a folder without COMPLETE is never loaded). New entries are seen: their names are kept."""
    written = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] in ("wandb", "run.lock") or any(p.endswith(".tmp") for p in relative.parts[:-1]):
            continue
        info = path.stat()
        written[str(relative)] = (info.st_size, info.st_mtime_ns) if path.is_file() else (0, 0)
    return written


def test_a_run_whose_lock_was_taken_over_while_suspended_stops_when_resumed_without_writing(digits_dataset,
                                                                                          tmp_path):
    """SLURM's suspend stops every process of a job (SIGSTOP) for as long as it likes; past the lock's staleness,
    another start takes the run directory over. Resumed, the run writes nothing more into it (checkpoints,
    metrics.jsonl, results: the same files, the same bytes), leaves the new lock alone, and every rank ends with
    exit code 4 and one line. The takeover is data_prep's own; its `reclaim` stands for the 10 minutes without a
    heartbeat that another host waits (on this host a suspended holder's pid is alive, and is never taken over).
    The suspension outlasts engine.hang_timeout_minutes, shortened for that: a paused job is not a hung one (the
    watchdog does not count a pause it slept through)."""
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "t"
    hang_timeout_s = 6
    overrides = overrides_of(digits_dataset, out, f"engine.hang_timeout_minutes={hang_timeout_s / 60}",
                             "checkpoint.every_steps=8")
    log = tmp_path / "launch.log"
    taker = FileLock(RunDir(run_dir).lock, holder_info(argv=["a start on another host"]),
                     reclaim=lambda holder: "no heartbeat for 600 s (as another host sees a suspended job)")
    with launched(overrides, log, out) as proc:
        wait_for((run_dir / "checkpoints" / f"step-{8:09d}" / "COMPLETE").exists, "first checkpoint", proc)
        os.killpg(proc.pid, signal.SIGSTOP)  # what `scontrol suspend` does
        wait_for(lambda: _stopped(proc.pid), "every process stopped", proc, timeout=60)
        before = _written(run_dir)
        taker.acquire()
        time.sleep(hang_timeout_s + 4)  # the suspension under test: longer than the hang timeout
        os.killpg(proc.pid, signal.SIGCONT)  # `scontrol resume`
        code = proc.wait(timeout=300)
        text = log.read_text()
        assert code == LOCKED, text[-4000:]
        assert_none_left(str(out))
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is no longer this run's" in errors[0] and "a start on another host" in errors[0], \
        text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert _written(run_dir) == before
    assert read_lock(RunDir(run_dir).lock) == taker.info  # the new holder's lock, untouched
    taker.release()

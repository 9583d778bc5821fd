"""Locks on directories, so that two runs never write the same files at once.

`FileLock` is the one implementation: a file created with O_CREAT|O_EXCL holding JSON about its holder
{host, pid, pid_start, start, argv, ...}. A lock is stale - its holder was killed - when, on this host, its
pid is gone (or now belongs to a process started later: a reused pid), or, from another host (where the
pid cannot be checked), its heartbeat - the file's mtime, refreshed by the holder every HEARTBEAT_S - is
older than STALE_S. A stale lock is taken over with a note naming the dead holder; a live one is refused
with an error naming it. A holder that was only paused longer than that (a suspended job, a node cut off from
the file server) has lost its lock when it runs again: its heartbeat checks that the file still names it before
refreshing it, and records the loss (`FileLock.lost`) instead of refreshing another process's lock; `holds()`
checks at once, for a holder about to write. Its users:

    data_prep   `OutputLock`: one per task of a job array, `<out>/_parts/locks/task-<i>-of-<N>.lock` (below)
    training    the run directory's lock, `<run>/run.lock` (`pipeline.run.lock`)
    launch      the lock around deciding and submitting a table's jobs (`launch.submit.slurm.submission_lock`)

The tasks of a SLURM array (`--num-tasks N --task-id i`) legitimately write into one `--out` together,
each its own shards, so data_prep's lock is per task. A run refuses to start while a live lock holds its
own task, or while a live lock of a different N exists (the two plans would split the shards differently).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from .shards import PARTS_DIR

LOCKS_DIR = "locks"
HEARTBEAT_S = 30.0  # how often a running process refreshes its lock's mtime
STALE_S = 600.0  # a lock from another host without a heartbeat for this long belongs to a dead run
_RECHECK_S = 0.2  # how long `holds` waits before judging a lock that is not ours a second time


class Locked(RuntimeError):
    """A live holder has the lock; the message names it, `holder` is its JSON."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


# Kept for data_prep's callers and tests: its refusal is a Locked like any other.
OutputLocked = Locked


def describe(info: dict) -> str:
    """The holder in one line: host, pid, SLURM job (if any), start time and command."""
    job = f", SLURM job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return (f"host {info.get('host')}, pid {info.get('pid')}{job}, started {info.get('start')}: "
            f"{' '.join(map(str, info.get('argv') or []))}")


def holder_info(argv: list[str] | None = None, **extra) -> dict:
    """What a lock says about the process taking it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "start": datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": list(sys.argv if argv is None else argv), **extra}


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22): tells a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def read_lock(path: Path) -> dict | None:
    """The lock's JSON, {} when unreadable (a holder caught between create and write), None when gone."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a killed run its parent has not reaped yet is a zombie: os.kill succeeds, but it is dead
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    except (OSError, IndexError):  # no /proc (macOS): trust os.kill
        return True
    return started is None or process_start(pid) in (None, started)


def stale_reason(path: Path, info: dict, stale_s: float = STALE_S) -> str | None:
    """Why the lock at `path` belongs to a dead run, or None when its run may still be alive."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "lock file gone"
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        alive = _pid_alive(info["pid"], info.get("pid_start"))
        return None if alive else f"pid {info['pid']} is not running on this host"
    # Another host (or a lock whose JSON was never written): only the heartbeat tells.
    return f"no heartbeat for {age:.0f} s" if age > stale_s else None


class FileLock:
    """`with FileLock(path, info): ...` - acquire (or Locked naming the holder), keep a heartbeat, release.

    `reclaim(holder) -> reason or None` lets a user of the lock take over a live-looking lock that is known
    to be its own (a requeued SLURM job finds the lock of its earlier start)."""

    def __init__(self, path: Path, info: dict | None = None, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S, reclaim: Callable[[dict], str | None] | None = None) -> None:
        self.path = Path(path)
        self.info = info if info is not None else holder_info()
        self.heartbeat_s, self.stale_s, self.reclaim = heartbeat_s, stale_s, reclaim
        self._last_beat = 0.0
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        self.held = False
        self.lost: str | None = None  # why the lock is no longer ours (taken over, deleted), once that is seen

    def refusal(self, holder: dict) -> str:
        """The error for a live holder (subclasses name what is locked and what to do)."""
        return (f"{self.path} is held by another live process ({describe(holder)}) - wait for it, or delete "
                f"{self.path} if it is dead")

    def acquire(self) -> None:
        """Create the lock, taking over a stale (or reclaimable) one; Locked when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a few rounds: only concurrent takeovers of the same stale lock loop
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is None:
                    continue  # released meanwhile: try again
                why = stale_reason(self.path, holder, self.stale_s) or (self.reclaim(holder) if self.reclaim else None)
                if why is None:
                    raise Locked(self.refusal(holder), holder) from None
                if self._take_over(holder):
                    print(f"note: taking over the stale lock {self.path} ({why}; it was {describe(holder)})",
                          file=sys.stderr, flush=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            self._last_beat = time.monotonic()
            return
        raise Locked(f"{self.path}: could not take the lock (other processes keep replacing it)")

    def acquire_waiting(self, timeout_s: float, on_wait: Callable[[Locked], None] | None = None,
                        poll_s: float = 0.2) -> None:
        """`acquire`, waiting up to `timeout_s` for a live holder to release it (`on_wait` once, when it first must)."""
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                return self.acquire()
            except Locked as locked:
                if time.monotonic() > deadline:
                    raise
                if not told and on_wait is not None:
                    on_wait(locked)
                told = True
                time.sleep(poll_s)

    def _take_over(self, holder: dict) -> bool:
        """Remove the lock judged from `holder`; False when it changed meanwhile (judge again)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)  # atomic: of two processes taking over, one gets the file
        except FileNotFoundError:
            return False
        if read_lock(aside) != holder:  # a fresh lock replaced the stale one between our read and the rename
            try:
                os.link(aside, self.path)  # put it back (fails if yet another one created one: theirs stands)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def beat(self) -> None:
        """Refresh the heartbeat (the lock's mtime) when HEARTBEAT_S has passed, if the lock is still ours (else
        `lost` says why, and nothing is refreshed: the file is another process's now); cheap to call often."""
        now = time.monotonic()
        if self.held and now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            if not self.holds():
                return
            try:
                os.utime(self.path)
            except OSError:  # deleted meanwhile, or its file system is gone: nothing to refresh
                pass

    def holds(self) -> bool:
        """Whether the lock file still names this holder (read now). False once it was taken over or deleted: a
        process that was paused past the staleness (a suspended job) or judged dead; `lost` then says why."""
        if not self.held or self.lost is not None:
            return False
        why = self._not_ours()
        if why is not None:
            # Judged twice: a takeover that finds the lock replaced puts it back (`_take_over`), so for an instant
            # a live holder's file can be missing; a lock really lost is still lost a moment later.
            time.sleep(_RECHECK_S)
            why = self._not_ours()
        if why is not None:
            self.lost = why
        return why is None

    def _not_ours(self) -> str | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return f"{self.path} was deleted (by hand, or by a process that judged this one dead)"
        except OSError:
            return None  # unreadable just now (a file server's hiccup): that is no sign of another holder
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}  # another process's lock, caught between its creation and its JSON
        if holder == self.info:
            return None
        whose = describe(holder) if isinstance(holder, dict) and holder else "another process"
        return f"{self.path} was taken over by {whose}"

    def start_heartbeat(self) -> None:
        """Refresh the heartbeat from a thread of its own, for holders whose work has no loop to call `beat` from
        often enough (a training step, an evaluation or a save may take minutes)."""
        def run() -> None:
            while not self._stop_heartbeat.wait(self.heartbeat_s) and self.lost is None:
                self.beat()

        self._heartbeat = threading.Thread(target=run, name=f"heartbeat {self.path.name}", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        """Delete the lock if it is still ours (a process that judged us dead may have taken it over)."""
        self._stop_heartbeat.set()
        if self.held and read_lock(self.path) == self.info:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # a directory that became read-only: the lock goes stale with this process
                pass
        self.held = False

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_path(out: Path, task_id: int, num_tasks: int) -> Path:
    return Path(out) / PARTS_DIR / LOCKS_DIR / f"task-{task_id}-of-{num_tasks}.lock"


class OutputLock(FileLock):
    """`with OutputLock(out, task_id, num_tasks): ...` - data_prep's lock on one task of an output directory
    (also released on an error or KeyboardInterrupt)."""

    def __init__(self, out: str | Path, task_id: int, num_tasks: int, argv: list[str] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> None:
        self.out, self.task_id, self.num_tasks = Path(out), task_id, num_tasks
        super().__init__(lock_path(self.out, task_id, num_tasks),
                         holder_info(argv, task_id=task_id, num_tasks=num_tasks), heartbeat_s, stale_s)

    def refusal(self, holder: dict) -> str:
        return (f"{self.out}: another data_prep run is writing task {self.task_id} of {self.num_tasks} here "
                f"({describe(holder)}) - wait for it, or delete {self.path} if it is dead")

    def acquire(self) -> None:
        super().acquire()
        try:
            # Checked after creating ours, so of two runs with different N starting together, each sees the other.
            self._refuse_if_other_n_is_live()
        except Locked:
            self.release()
            raise

    def _refuse_if_other_n_is_live(self) -> None:
        for other in sorted(self.path.parent.glob("task-*-of-*.lock")):
            info = read_lock(other)
            if info is None or other.name.endswith(f"-of-{self.num_tasks}.lock"):
                continue
            if stale_reason(other, info, self.stale_s) is None:
                raise Locked(
                    f"{self.out}: a run with another --num-tasks is writing here ({other.name}: {describe(info)}); "
                    f"this run has --num-tasks {self.num_tasks} - wait for it, or delete {other} if it is dead", info)

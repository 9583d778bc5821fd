"""A per-task lock on an output directory, so two runs never write the same shards at once.

The tasks of a SLURM array (`--num-tasks N --task-id i`) legitimately write into one `--out` together,
each its own shards, so the lock is per task: `<out>/_parts/locks/task-<i>-of-<N>.lock`, created with
O_CREAT|O_EXCL and holding JSON {host, pid, start, argv}. A run refuses to start while a live lock holds
its own task, or while a live lock of a different N exists (the two plans would split the shards
differently). A lock is stale - its run was killed - when, on this host, its pid is gone, or, from
another host (where the pid cannot be checked), its heartbeat - the file's mtime, refreshed by the
running process every HEARTBEAT_S - is older than STALE_S. A stale lock of this task is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from .shards import PARTS_DIR

LOCKS_DIR = "locks"
HEARTBEAT_S = 30.0  # how often a running process refreshes its lock's mtime
STALE_S = 600.0  # a lock from another host without a heartbeat for this long belongs to a dead run


class OutputLocked(RuntimeError):
    """Another live run holds this task's lock (or runs with another --num-tasks); the message names it."""


def lock_path(out: Path, task_id: int, num_tasks: int) -> Path:
    return Path(out) / PARTS_DIR / LOCKS_DIR / f"task-{task_id}-of-{num_tasks}.lock"


def _describe(info: Dict) -> str:
    """The holder in one line: host, pid, start time and command."""
    return (f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('start')}: "
            f"{' '.join(map(str, info.get('argv') or []))}")


def _read(path: Path) -> Optional[Dict]:
    """The lock's JSON, {} when unreadable (a holder caught between create and write), None when gone."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a killed run its parent has not reaped yet is a zombie: os.kill succeeds, but it is dead
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): trust os.kill
        return True


def stale_reason(path: Path, info: Dict, stale_s: float = STALE_S) -> Optional[str]:
    """Why the lock at `path` belongs to a dead run, or None when its run may still be alive."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "lock file gone"
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return None if _pid_alive(info["pid"]) else f"pid {info['pid']} is not running on this host"
    # Another host (or a lock whose JSON was never written): only the heartbeat tells.
    return f"no heartbeat for {age:.0f} s" if age > stale_s else None


class OutputLock:
    """`with OutputLock(out, task_id, num_tasks): ...` - acquire, `beat()` periodically, release at the end
    (also on an error or KeyboardInterrupt)."""

    def __init__(self, out: str | Path, task_id: int, num_tasks: int, argv: Optional[List[str]] = None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> None:
        self.out, self.task_id, self.num_tasks = Path(out), task_id, num_tasks
        self.path = lock_path(self.out, task_id, num_tasks)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "start": datetime.now().astimezone().isoformat(timespec="seconds"),
                     "argv": list(sys.argv if argv is None else argv), "task_id": task_id, "num_tasks": num_tasks}
        self._last_beat = 0.0
        self.held = False

    def _refuse_if_other_n_is_live(self) -> None:
        for other in sorted(self.path.parent.glob("task-*-of-*.lock")):
            info = _read(other)
            if info is None or other.name.endswith(f"-of-{self.num_tasks}.lock"):
                continue
            if stale_reason(other, info, self.stale_s) is None:
                raise OutputLocked(
                    f"{self.out}: a run with another --num-tasks is writing here ({other.name}: {_describe(info)}); "
                    f"this run has --num-tasks {self.num_tasks} - wait for it, or delete {other} if it is dead")

    def _take_over(self, info: Dict) -> bool:
        """Remove the stale lock judged from `info`; False when it changed meanwhile (judge again)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)  # atomic: of two runs taking over, one gets the file
        except FileNotFoundError:
            return False
        if _read(aside) != info:  # a fresh lock replaced the stale one between our read and the rename
            try:
                os.link(aside, self.path)  # put it back (fails if yet another run created one: theirs stands)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def acquire(self) -> None:
        """Create this task's lock, taking over a stale one; OutputLocked when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create()
        try:
            # Checked after creating ours, so of two runs with different N starting together, each sees the other.
            self._refuse_if_other_n_is_live()
        except OutputLocked:
            self.release()
            raise

    def _create(self) -> None:
        for _ in range(5):  # a few rounds: only concurrent takeovers of the same stale lock loop
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = _read(self.path)
                if info is None:
                    continue  # released meanwhile: try again
                why = stale_reason(self.path, info, self.stale_s)
                if why is None:
                    raise OutputLocked(
                        f"{self.out}: another data_prep run is writing task {self.task_id} of {self.num_tasks} here "
                        f"({_describe(info)}) - wait for it, or delete {self.path} if it is dead") from None
                if self._take_over(info):
                    print(f"note: taking over the stale lock {self.path} ({why}; it was {_describe(info)})",
                          file=sys.stderr)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            self._last_beat = time.monotonic()
            return
        raise OutputLocked(f"{self.path}: could not take the lock (other runs keep replacing it)")

    def beat(self) -> None:
        """Refresh the heartbeat (the lock's mtime) when HEARTBEAT_S has passed; cheap to call often."""
        now = time.monotonic()
        if self.held and now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            try:
                os.utime(self.path)
            except FileNotFoundError:  # deleted by hand or taken over: nothing to refresh
                pass

    def release(self) -> None:
        """Delete the lock if it is still ours (a run that judged us dead may have taken it over)."""
        if self.held and _read(self.path) == self.info:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

"""The job's own hang watchdog: a rank that makes no progress for `engine.hang_timeout_minutes` once training runs
ends itself the same way on every backend, with one `error:` line, its run lock released, and exit code 8 (HUNG).

Why not the backend's timeout alone: gloo raises from a collective that timed out, which the training says as one
line (`collectives.hang_error`), but NCCL's own watchdog aborts the process (SIGABRT, exit code 134): no line, no
`finally`, the run's lock left behind for another host to wait 10 minutes on. So the process group's timeout is set
longer than this one (`collectives.watch_for_hangs`), and this one fires first on both.

    watch_for_hangs(minutes, last_words=[lock.release])   # after the first step (collectives.watch_for_hangs)
    note_progress()                                       # a step, an evaluation batch, a collective, a file saved
    stop_watching()                                       # training over: what follows may take its time

Progress is noted where the training moves on: each step, each evaluation batch, each of the project's collectives
(so a save's or an evaluation's end), each checkpoint file written. A phase longer than the timeout is then a hang
only where one of those takes that long: a collective waiting for a rank that does not come, one file that takes
minutes to write. A paused process is not a hung one: when this thread itself did not run for much longer than it
asked (the whole process was stopped: SLURM's suspend, SIGSTOP), that time is not counted.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable

from pipeline.dist.exit_codes import HUNG

_POLL_MAX_S = 5.0  # how often the watchdog looks at most; more often for short timeouts (a tenth of one)
_PAUSED_S = 1.0  # this much later than asked, the watchdog's own sleep says the process was stopped, not hung


class HangWatchdog:
    """A daemon thread that ends the process (exit code 8) after `timeout_s` without `progress()`."""

    def __init__(self, timeout_s: float, message: str, last_words: Iterable[Callable[[], None]] = ()) -> None:
        self.timeout_s, self.message, self.last_words = timeout_s, message, list(last_words)
        self.poll_s = min(_POLL_MAX_S, timeout_s / 10)
        self._last_progress = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hang watchdog", daemon=True)

    def start(self) -> HangWatchdog:
        self._last_progress = time.monotonic()
        self._thread.start()
        return self

    def progress(self) -> None:
        """The training moved on (called often: one float stored)."""
        self._last_progress = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        looked = time.monotonic()
        while not self._stopped.wait(self.poll_s):
            now = time.monotonic()
            overslept = now - looked - self.poll_s
            looked = now
            if overslept > _PAUSED_S:
                # The process was stopped (this thread could not run either): the pause is not the training's.
                self._last_progress += overslept
            if now - self._last_progress > self.timeout_s and not self._stopped.is_set():
                self._end()

    def _end(self) -> None:
        """One line, the last words (the run lock released), streams flushed, then exit at once: the main thread
        is stuck in a collective, so neither an exception nor `sys.exit` could end it."""
        print(f"error: {self.message}", file=sys.stderr, flush=True)
        for words in self.last_words:
            try:
                words()
            except Exception:  # noqa: BLE001, S110 - ending anyway: the next start judges what was left
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        # Nothing else needs flushing: metrics.jsonl is closed after each record, a checkpoint without its COMPLETE
        # marker is never loaded, and the next start sends W&B again what this one may not have sent.
        os._exit(HUNG)


_active: HangWatchdog | None = None


def start_watching(timeout_minutes: float, message: str, last_words: Iterable[Callable[[], None]] = ()) -> None:
    """Watch this process from now on (a watchdog already running is replaced)."""
    global _active
    stop_watching()
    _active = HangWatchdog(60 * timeout_minutes, message, last_words).start()


def note_progress() -> None:
    """The training moved on: the watchdog's clock starts again (nothing without a watchdog)."""
    watchdog = _active
    if watchdog is not None:
        watchdog.progress()


def stop_watching() -> None:
    """Training is over (finished, stopped or failed): no more watching."""
    global _active
    watchdog, _active = _active, None
    if watchdog is not None:
        watchdog.stop()

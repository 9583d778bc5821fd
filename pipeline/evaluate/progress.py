"""An evaluation's progress on the primary rank's stderr: a bar on a terminal, a line now and then in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from pipeline.run.logger import format_duration


class EvalProgress:
    """This rank's evaluation progress on stderr: batches done of total, this rank's images/s and ETA.

    On a terminal, a tqdm bar; otherwise (a SLURM log, a file) a line each `every_batches` batches (default:
    a tenth of them) or `every_s` seconds, whichever comes first, and one when done. Disabled (off the
    primary rank) it prints nothing. Used as a context manager, called with each batch's sample count:

        with EvalProgress(len(loader), enabled=info.is_primary, desc="center test") as progress:
            evaluate(predict, loader, progress=progress)
    """

    def __init__(self, total: int | None, enabled: bool = True, desc: str = "evaluation",
                 every_batches: int | None = None, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.total, self.enabled, self.desc = total, enabled, desc
        self.stream = stream or sys.stderr
        if every_batches is None:
            every_batches = max(1, total // 10) if total else 10
        self.every_batches = every_batches
        self.every_s = every_s
        self.batches = self.images = self.batches_shown = 0
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            self.bar = tqdm(total=total, desc=desc, unit="batch", file=self.stream, dynamic_ncols=True)

    def __call__(self, images: int) -> None:
        if not self.enabled:
            return
        self.batches += 1
        self.images += images
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{self._rate(now)} img/s", refresh=False)
        elif self.batches % self.every_batches == 0 or now - self.last_line >= self.every_s:
            self._line(now)

    def __enter__(self) -> EvalProgress:
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.batches != self.batches_shown:  # the last batch has no line yet
            self._line(time.perf_counter())

    def _rate(self, now: float) -> str:
        """Images per second, with decimals where there are few (multi-scale reads one image a batch)."""
        rate = self.images / max(now - self.start, 1e-9)
        return f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"

    def _line(self, now: float) -> None:
        self.last_line, self.batches_shown = now, self.batches
        done = f"{self.batches}/{self.total} batches ({self.batches / self.total:.0%})" if self.total else \
            f"{self.batches} batches"
        eta = ""
        if self.total and self.batches < self.total:
            eta = f", eta {format_duration((self.total - self.batches) * (now - self.start) / self.batches)}"
        print(f"{self.desc}: {done}, {self._rate(now)} img/s{eta}", file=self.stream, flush=True)

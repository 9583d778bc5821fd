"""Checkpoint directories that are either complete or ignored.

A checkpoint is a directory `<run>/checkpoints/step-<NNNNNNNNN>/` holding whatever the engine writes
(our `state.pt`, or DeepSpeed's own files plus ours, and one file per rank for loader state) and, written
last, `COMPLETE`, a small JSON with the step and metrics. It is first written under a temporary name and
renamed once complete, so a job killed mid-write leaves a `.tmp` directory that is never loaded and is
cleaned up by the next save. Loading uses `torch.load(weights_only=True)`: a checkpoint is data, never code.

    store = CheckpointStore(run_dir / "checkpoints")
    staging = store.begin(step)          # every rank writes its files into `staging`
    ...                                   # (barrier)
    store.commit(staging, step, {"val_error": 7.1})     # primary rank only: marker + rename + rotation
    latest = store.latest()              # the newest complete checkpoint, or None
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^step-(\d{9})$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: Dict[str, Any]


class CheckpointDirError(OSError):
    """The checkpoint directory cannot be written (read-only file system, permissions, a file in the way)."""


class WorldSizeChangeError(RuntimeError):
    """A checkpoint that the engine cannot continue with another number of ranks (DeepSpeed ZeRO)."""


class CheckpointStore:
    def __init__(self, root: Path | str, keep_last: int = 2, keep_best: bool = True,
                 best_metric: str = "val_top1_error") -> None:
        self.root = Path(root)
        self.keep_last = max(1, keep_last)
        self.keep_best = keep_best
        self.best_metric = best_metric  # lower is better

    # -- writing ---------------------------------------------------------------------------------

    def check_writable(self, probe_name: str = ".write-probe") -> None:
        """Create the directory and write a file there, or raise one clear error naming the directory.

        Called before training starts: finding out at the first save would lose the work before it.
        """
        probe = self.root / probe_name
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            reason = "it is a file, not a directory" if self.root.is_file() else e.strerror or str(e)
            raise CheckpointDirError(f"cannot write checkpoints to {self.root}: {reason}") from None

    def staging_path(self, step: int) -> Path:
        return self.root / f"{_dirname(step)}.tmp"

    def begin(self, step: int) -> Path:
        """A fresh staging directory for the checkpoint of `step` (left-over staging is removed)."""
        staging = self.staging_path(step)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def commit(self, staging: Path, step: int, meta: Optional[Dict[str, Any]] = None) -> Checkpoint:
        """Mark `staging` complete and move it into place, then drop old checkpoints."""
        meta = {"step": step, "time": time.time(), **(meta or {})}
        _write_atomically(staging / MARKER, json.dumps(meta, sort_keys=True))
        final = self.root / _dirname(step)
        if final.exists():  # a re-save of the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        staging.rename(final)
        self._rotate()
        return Checkpoint(final, step, meta)

    # -- reading ---------------------------------------------------------------------------------

    def complete(self) -> List[Checkpoint]:
        """Every complete checkpoint, oldest first; incomplete ones are reported and skipped."""
        found = []
        for path in sorted(self.root.glob("step-*")) if self.root.exists() else []:
            match = _NAME.match(path.name)
            if not match:
                if path.name.endswith(".tmp"):
                    log.warning("skipping %s: a checkpoint whose writing did not finish", path)
                continue
            meta = _read_marker(path)
            if meta is None:
                log.warning("skipping %s: no %s marker (its writing did not finish)", path, MARKER)
                continue
            found.append(Checkpoint(path, int(match.group(1)), meta))
        return found

    def latest(self) -> Optional[Checkpoint]:
        complete = self.complete()
        return complete[-1] if complete else None

    def best(self) -> Optional[Checkpoint]:
        scored = [c for c in self.complete() if c.meta.get(self.best_metric) is not None]
        return min(scored, key=lambda c: (c.meta[self.best_metric], -c.step)) if scored else None

    def select(self, which: str) -> Checkpoint:
        """`last`, `best` (lowest `best_metric`), or the path of one checkpoint directory; must be complete."""
        if which in ("last", "best"):
            found = self.latest() if which == "last" else self.best()
            if found is None:
                detail = "" if which == "last" or not self.complete() else \
                    f" (none records {self.best_metric}; use `last` or a path)"
                raise FileNotFoundError(f"{self.root}: no complete checkpoint to use as {which!r}{detail}")
            return found
        path = Path(which)
        match = _NAME.match(path.name)
        meta = _read_marker(path)
        if not path.is_dir() or match is None or meta is None:
            raise FileNotFoundError(f"{path}: not a complete checkpoint directory (step-NNNNNNNNN/ with {MARKER})")
        return Checkpoint(path, int(match.group(1)), meta)

    def _rotate(self) -> None:
        complete = self.complete()
        keep = {c.path for c in complete[-self.keep_last:]}
        best = self.best() if self.keep_best else None
        if best is not None:
            keep.add(best.path)
        for c in complete:
            if c.path not in keep:
                shutil.rmtree(c.path, ignore_errors=True)


def saved_world_size(checkpoint: Path) -> int:
    """How many ranks wrote `checkpoint`: each writes its own `rank-NNNNN.pt` (loader position, RNG)."""
    return len(list(Path(checkpoint).glob("rank-*.pt")))


def save_state(path: Path, state: Dict[str, Any]) -> None:
    """torch.save to a temporary name, then rename."""
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(path: Path) -> Dict[str, Any]:
    """Load a state file as data only: tensors, numbers, strings, containers (no pickled code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or hostile file: say which
        raise RuntimeError(f"cannot load checkpoint state {path}: {e}") from e


def _dirname(step: int) -> str:
    return f"step-{step:09d}"


def _read_marker(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)

"""Checkpoint directories that are either complete and intact, or ignored.

A checkpoint is a directory `<run>/checkpoints/step-<NNNNNNNNN>/` holding whatever the engine writes
(our `state.pt`, or DeepSpeed's own files plus ours, and one file per rank for loader state) and, written
last, `COMPLETE`: a small JSON with the step, metrics and the size and sha256 of every file. It is first
written under a temporary name and renamed once complete, so a job killed mid-write leaves a `.tmp`
directory that is never loaded and is cleaned up by the next start. A re-save of a step moves its checkpoint
aside (`.replaced`) until the new one is in place; a job killed in between gets the step back at the next
start (`restore_replaced`). Every file is flushed to disk before the marker is written, and the marker before
the rename (`data_prep.durable`), so a node that crashes cannot leave a COMPLETE checkpoint with data missing.
Loading checks each file against the marker first (`verify`), and uses `torch.load(weights_only=True)`: a
checkpoint is data, never code.

    store = CheckpointStore(run_dir / "checkpoints")
    store.save(step, is_primary, write)   # every rank: write(staging) -> {file: FileRecord}; one COMPLETE
    latest = store.latest()               # the newest complete checkpoint, or None
    problem = store.verify(latest)        # "" when every file is what was written

`save` is collective: a rank that cannot write (a full disk, a read-only directory) makes every rank
raise `CheckpointWriteError`, naming the directory and the latest complete checkpoint, which is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_prep.durable import FileRecord, check_file, fsync_dir, write_file
from pipeline.dist import RankFailed, exit_codes, on_every_rank

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^step-(\d{9})$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]


class CheckpointDirError(OSError):
    """The checkpoint directory cannot be written (read-only file system, permissions, a file in the way)."""

    exit_code = exit_codes.WRITE


class CheckpointWriteError(CheckpointDirError):
    """A save failed on some rank (full disk, a directory made read-only...); the latest complete one is kept."""


class CheckpointDamaged(RuntimeError):
    """A checkpoint whose files are not what was written, or cannot be loaded; the message names the file."""

    exit_code = exit_codes.CHECKPOINT


class NoIntactCheckpoint(RuntimeError):
    """Every complete checkpoint of the run is damaged: there is nothing to resume from."""

    exit_code = exit_codes.CHECKPOINT


class WorldSizeChangeError(RuntimeError):
    """A checkpoint that the engine cannot continue with another number of ranks (DeepSpeed ZeRO)."""

    exit_code = exit_codes.USAGE


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

    def commit(self, staging: Path, step: int, meta: dict[str, Any] | None = None,
               files: dict[str, FileRecord] | None = None) -> Checkpoint:
        """Mark `staging` complete (with the size and sha256 of each of its `files`) and move it into place, then
        drop old checkpoints. Every file is on disk before the marker, the marker before the name."""
        meta = {"step": step, "time": time.time(), **(meta or {})}
        if files is not None:
            meta["files"] = {name: record.as_list() for name, record in sorted(files.items())}
        for folder in [p for p in staging.rglob("*") if p.is_dir()] + [staging]:
            fsync_dir(folder)  # the entries of every file and sub-folder (DeepSpeed's) written into it
        write_file(staging / MARKER, json.dumps(meta, sort_keys=True).encode())
        final = self.root / _dirname(step)
        replaced = final.with_name(final.name + ".replaced")
        if final.exists():  # a re-save of the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(replaced, ignore_errors=True)
            final.rename(replaced)
        staging.rename(final)
        fsync_dir(self.root)
        shutil.rmtree(replaced, ignore_errors=True)
        self._rotate()
        return Checkpoint(final, step, meta)

    def save(self, step: int, is_primary: bool, write: Callable[[Path], dict[str, FileRecord]],
             meta: dict[str, Any] | None = None) -> Checkpoint:
        """Every rank's files of the checkpoint of `step`, then one COMPLETE marker (collective: every rank calls it).

        `write(staging)` writes this rank's files into the staging directory and returns their records
        (relative path -> size and sha256). A rank that fails makes every rank raise CheckpointWriteError
        (or `dist.RankFailed` with its message): the staging directory is removed, the latest complete
        checkpoint stays the latest."""

        staging = self.staging_path(step)
        with self._removed_on_failure(staging, is_primary):
            on_every_rank(lambda: self._explained(step, lambda: self.begin(step) if is_primary else None))
        return self.complete_save(step, is_primary, lambda: write(staging), meta)

    def complete_save(self, step: int, is_primary: bool, written: Callable[[], dict[str, FileRecord]],
                      meta: dict[str, Any] | None = None) -> Checkpoint:
        """Gather every rank's file records (`written()`, which may wait for this rank's writer), then the primary
        marks the checkpoint complete (collective). Failures as in `save`."""

        staging = self.staging_path(step)
        with self._removed_on_failure(staging, is_primary):
            records = on_every_rank(lambda: self._explained(step, written), gather=True)
            files = {name: record for rank_records in records for name, record in rank_records.items()}
            on_every_rank(lambda: self._explained(
                step, lambda: self.commit(staging, step, meta, files) if is_primary else None))
        return Checkpoint(self.root / _dirname(step), step, meta or {})

    def remove_unfinished(self) -> list[Path]:
        """Remove the staging directories a killed start left (never loaded: see `complete`); returns them.

        Called by the primary before training starts, so that a background save, whose ranks each make its
        staging directory, never writes beside another start's files. A re-save stopped between its two renames
        gets its step back first (`restore_replaced`), possibly from the staging copy that is removed here."""
        self.restore_replaced()
        unfinished = sorted(self.root.glob("step-*.tmp")) if self.root.exists() else []
        for path in unfinished:
            log.warning("removing %s: a checkpoint whose writing did not finish", path)
            shutil.rmtree(path, ignore_errors=True)
        return unfinished

    def restore_replaced(self) -> list[Path]:
        """Give back the checkpoint of a re-save that a killed job left between its two renames; returns them.

        `commit` renames the step's checkpoint to `.replaced`, then the staging copy into its place: between the
        two the step has no checkpoint. The staging copy is the newer, so it is promoted where it is complete and
        intact; else the replaced one is renamed back. A `.replaced` beside its checkpoint is only a leftover."""
        restored = []
        for replaced in sorted(self.root.glob("step-*.replaced")) if self.root.exists() else []:
            final = replaced.with_name(replaced.name.removesuffix(".replaced"))
            match = _NAME.match(final.name)
            if match is None:
                continue
            if not final.exists():
                staging = self.staging_path(int(match.group(1)))
                source = staging if self._intact(staging, int(match.group(1))) else replaced
                source.rename(final)
                fsync_dir(self.root)
                log.warning("restored %s from %s: a re-save of its step was stopped between its two renames",
                            final, source.name)
                restored.append(final)
            shutil.rmtree(replaced, ignore_errors=True)
        return restored

    def _intact(self, path: Path, step: int) -> bool:
        """`path` holds a COMPLETE marker and every file it records, as recorded."""
        meta = _read_marker(path)
        return meta is not None and not self.verify(Checkpoint(path, step, meta))

    @contextlib.contextmanager
    def _removed_on_failure(self, staging: Path, is_primary: bool) -> Iterator[None]:
        try:
            yield
        except (CheckpointWriteError, RankFailed):
            if is_primary:
                shutil.rmtree(staging, ignore_errors=True)  # what was written of it: give the space back
            raise

    def _explained(self, step: int, work: Callable[[], Any]) -> Any:
        """`work()`, with an OSError turned into one CheckpointWriteError that says what is kept and what to do."""
        try:
            return work()
        except OSError as e:
            if isinstance(e, CheckpointWriteError):
                raise
            where = f" ({e.filename})" if e.filename else ""
            error = CheckpointWriteError(f"cannot write the checkpoint of step {step} in {self.root}: "
                                         f"{e.strerror or e}{where}; {self._what_is_kept()}")
            error.errno = e.errno
            raise error from e

    def _what_is_kept(self) -> str:
        complete = self.complete(warn=False)
        latest = complete[-1] if complete else None
        if latest is None:
            return "there is no complete checkpoint yet: fix the directory (free space, permissions) and start again"
        return (f"the latest complete checkpoint, {latest.path} (step {latest.step}), is kept: free space or fix the "
                "directory, then run the same command to resume from it")

    # -- reading ---------------------------------------------------------------------------------

    def complete(self, warn: bool = True) -> list[Checkpoint]:
        """Every complete checkpoint, oldest first; incomplete ones are skipped (and reported, with `warn`)."""
        found = []
        for path in sorted(self.root.glob("step-*")) if self.root.exists() else []:
            match = _NAME.match(path.name)
            if not match:
                if path.name.endswith(".tmp") and warn:
                    log.warning("skipping %s: a checkpoint whose writing did not finish", path)
                continue
            meta = _read_marker(path)
            if meta is None:
                if warn:
                    log.warning("skipping %s: no %s marker (its writing did not finish)", path, MARKER)
                continue
            found.append(Checkpoint(path, int(match.group(1)), meta))
        return found

    def latest(self) -> Checkpoint | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def best(self) -> Checkpoint | None:
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

    def verify(self, checkpoint: Checkpoint) -> str:
        """Why `checkpoint` cannot be trusted: each file whose size or sha256 is not what was written ("" when all
        are, or when its marker predates the records)."""
        problems = [check_file(checkpoint.path / name, FileRecord(*record))
                    for name, record in checkpoint.meta.get("files", {}).items()]
        return "; ".join(p for p in problems if p)

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


def save_state(path: Path, state: dict[str, Any]) -> FileRecord:
    """torch.save `state` to `path`, whole and on disk once named; returns its size and sha256.

    Serialised in memory first: a write that fails (a full disk) then raises an OSError naming the file and
    the reason, where torch's own file writer says only `basic_ios::clear: iostream error`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_file(path, buffer.getbuffer())


def load_state(path: Path, allowed: list | None = None) -> dict[str, Any]:
    """Load a state file as data only: tensors, numbers, strings, containers, and the classes in `allowed`
    (plain data classes a library pickles, allowed by name), never pickled code."""
    try:
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or hostile file: say which
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointDamaged(f"cannot load checkpoint state {path}: {reason}") from e


def _dirname(step: int) -> str:
    return f"step-{step:09d}"


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


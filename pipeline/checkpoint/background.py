"""Checkpoints that do not stop training: the state is copied to host memory, then written by a thread.

A save takes a snapshot of what it must write (every tensor copied to host memory, so that training can change
the originals at once) and hands the files to this process's writer thread; training goes on. The checkpoint
is marked COMPLETE (`CheckpointStore.complete_save`: every rank's file records gathered, the marker written by
the primary after every file and folder is flushed to disk) only once every rank's writes have finished:
training asks at its periodic check (`writing`, reduced over the ranks with the stop flag it already
reduces there), and a save waits for the previous one first. So checkpoints complete in order, one at a time,
and a rank killed while writing leaves a staging directory that is never loaded: the previous checkpoint stays
the latest complete one. A stop signal and the end of training save synchronously (`save(..., background=False)`).

    saves = CheckpointSaves(store, info.is_primary)
    saves.save(step, queue_files, meta, background=True)   # queue_files(staging, writer): writer.submit(path, state)
    if saves.pending and not dist.any_rank([saves.writing])[0]:
        saves.finish()                                      # collective: gather the records, COMPLETE
    saves.close()

The snapshot costs host memory the size of what this rank writes (the primary: weights and optimizer state)
for as long as the write takes; the writer serialises it in memory once more before writing (`save_state`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_prep.durable import FileRecord
from pipeline.checkpoint.store import CheckpointStore, save_state
from pipeline.dist import note_progress


def snapshot(value: Any) -> Any:
    """A copy of `value` that training cannot change: every tensor copied to host memory, containers rebuilt.

    Anything else (numbers, strings, the plain records DeepSpeed keeps) is immutable or never changed in place
    by training, and is kept as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((key, snapshot(item)) for key, item in value.items())  # OrderedDict stays one
    if isinstance(value, list):
        return [snapshot(item) for item in value]
    if isinstance(value, tuple):
        items = [snapshot(item) for item in value]
        if all(a is b for a, b in zip(items, value)):
            return value  # no tensor inside (torch.Size, shapes): nothing to copy
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


class FileWriter:
    """One rank's files of one checkpoint: each submitted state is written whole and flushed (`save_state`), and
    its size and sha256 kept for the COMPLETE marker.

    Without a thread pool a file is written when submitted. With one, the state is snapshotted when submitted
    and written by the pool's thread. Either way an error (a full disk) is kept and raised by `records()`, which
    the save calls from a collective, so that every rank learns of it together: a rank raising in the middle of
    an engine's save would leave the others waiting at its barriers."""

    def __init__(self, staging: Path, pool: concurrent.futures.Executor | None = None) -> None:
        self.staging, self._pool = staging, pool
        self._written: list[tuple[str, concurrent.futures.Future[FileRecord]]] = []
        self._error: OSError | None = None

    def submit(self, path: Path | str, state: Any) -> None:
        """Write `state` to `path` (relative to the staging directory, or inside it)."""
        path = self.staging / path
        name = str(path.relative_to(self.staging))
        if self._error is not None:
            return  # the first failure stands: writing more would only fill the disk further
        future: concurrent.futures.Future[FileRecord]
        if self._pool is None:
            future = concurrent.futures.Future()
            try:
                future.set_result(save_state(path, state))
            except OSError as e:
                future.set_exception(e)
            note_progress()  # a save is as long as its files: each one written is progress (`dist.watchdog`)
        else:
            future = self._pool.submit(save_state, path, snapshot(state))
        self._written.append((name, future))

    def fail(self, error: OSError) -> None:
        """Keep `error` (the first one) for `records()` to raise."""
        self._error = self._error or error

    def done(self) -> bool:
        return all(future.done() for _, future in self._written)

    def records(self) -> dict[str, FileRecord]:
        """Every file's record once all are written (waits for them); raises the first write error."""
        written: dict[str, FileRecord] = {}
        for name, future in self._written:
            try:
                written[name] = future.result()
            except OSError as e:
                self.fail(e)
            note_progress()  # waited for one more file: progress, as above
        if self._error is not None:
            raise self._error
        return written


@dataclass
class _Pending:
    step: int
    writer: FileWriter
    meta: dict | None


class CheckpointSaves:
    """The run's checkpoint saves, one at a time and in order; collective: every rank calls the same methods at
    the same steps."""

    def __init__(self, store: CheckpointStore, is_primary: bool) -> None:
        self.store, self.is_primary = store, is_primary
        self.pending: _Pending | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")

    @property
    def writing(self) -> bool:
        """This rank's files of the pending save are still being written."""
        return self.pending is not None and not self.pending.writer.done()

    def save(self, step: int, queue_files: Callable[[Path, FileWriter], None], meta: dict | None = None,
             background: bool = False) -> None:
        """The checkpoint of `step`: `queue_files(staging, writer)` submits this rank's files (and runs the
        engine's collectives). In the background it returns once they are snapshotted; otherwise once the
        checkpoint is complete on disk."""
        self.finish()  # the previous save first: checkpoints complete in order
        if not background:
            def write(staging: Path) -> dict[str, FileRecord]:
                writer = FileWriter(staging)
                queue_files(staging, writer)
                return writer.records()

            self.store.save(step, self.is_primary, write, meta)
            return
        staging = self.store.staging_path(step)
        writer = FileWriter(staging, self._pool)
        try:
            # Every rank makes it (no collective to wait for the primary): the primary removed what a killed
            # start left behind before training began (`CheckpointStore.remove_unfinished`).
            staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            writer.fail(e)  # raised on every rank together when the save completes
        queue_files(staging, writer)
        self.pending = _Pending(step, writer, meta)

    def finish(self) -> None:
        """Wait for this rank's files of the pending save, then mark it complete (collective)."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        self.store.complete_save(pending.step, self.is_primary, pending.writer.records, pending.meta)

    def close(self) -> None:
        """Stop taking writes. A save still pending is never marked complete (the run failed or was killed)."""
        self.pending = None
        self._pool.shutdown(wait=False, cancel_futures=True)

"""The one entry to a run's checkpoints, for training: the folder prepared, the newest intact checkpoint resumed,
saves written (in the background or at once) and completed in order.

    checkpoints = RunCheckpoints(run.checkpoints, cfg.checkpoint, info, owner=lock)  # the run's lock, primary only
    checkpoints.prepare()                                        # every rank, before training
    resumed = checkpoints.resume(engine)                         # None: nothing to resume from
    checkpoints.save(step, queue_files, metrics, background)     # collective
    checkpoints.writing, checkpoints.finish_pending()             # a background save, once every rank wrote it
    checkpoints.close()

Under it: `store` (the directories and their COMPLETE markers), `background` (the writer thread), `resume`;
when to save is `policy`'s. Before a save starts or completes, every rank learns whether the run directory is still
this training's (`owner`: the run's lock, held by the primary): one that was taken over while the job was paused
is another run's, and this one ends (the owner's error, exit code 4) before any rank writes into it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pipeline.checkpoint.background import CheckpointSaves, FileWriter
from pipeline.checkpoint.resume import Resumption, resume_latest_intact
from pipeline.checkpoint.store import CheckpointStore
from pipeline.config.schema import CheckpointConfig
from pipeline.dist import DistInfo, on_every_rank

QueueFiles = Callable[[Path, FileWriter], None]  # (staging directory, writer): submits this rank's files


class Owner(Protocol):
    """What makes the run directory this training's (`pipeline.run.lock.RunLock`)."""

    def holds(self) -> bool:
        """Whether it still is (a small file read)."""

    def ensure_held(self) -> None:
        """Nothing while it is this training's; an error with an exit code of its own once it is not."""


class RunCheckpoints:
    """A run's checkpoints folder, as every rank of its training sees it."""

    def __init__(self, folder: Path, cfg: CheckpointConfig, info: DistInfo, owner: Owner | None = None) -> None:
        self.info, self.owner = info, owner
        self.store = CheckpointStore(folder, cfg.keep_last, cfg.keep_best)
        self._saves = CheckpointSaves(self.store, info.is_primary)

    def prepare(self) -> None:
        """Check that this rank can write into the folder (one error naming it, before any work is done), and on
        the primary remove what a killed start left half-written, before any rank can start a save."""
        self.store.check_writable(f".write-probe-{self.info.rank:05d}")
        if self.info.is_primary:
            self.store.remove_unfinished()

    def resume(self, engine) -> Resumption | None:
        """Load the newest intact checkpoint into `engine` (collective); None when the run has none yet."""
        return resume_latest_intact(self.store, engine, self.info)

    def save(self, step: int, queue_files: QueueFiles, metrics: dict | None = None,
             background: bool = False) -> None:
        """The checkpoint of `step` (collective); `metrics` go into its marker (the best checkpoint is kept)."""
        self.ensure_owned()
        self._saves.save(step, queue_files, metrics, background)

    @property
    def writing(self) -> bool:
        """This rank's files of a background save are still being written."""
        return self._saves.writing

    def finish_pending(self) -> None:
        """Mark the pending background save complete (collective: every rank has written its files)."""
        if self._saves.pending is not None:
            self.ensure_owned()  # the marker, the rename and the rotation write into the run directory
        self._saves.finish()

    def owner_lost(self) -> bool:
        """Whether this rank sees the run directory taken from this training (the primary reads its lock file)."""
        return self.owner is not None and not self.owner.holds()

    def ensure_owned(self) -> None:
        """Every rank learns whether the run directory is still this training's (collective); when it is not, the
        owner's error ends the primary, `RankFailed` with its exit code every other rank, and nothing is written."""
        on_every_rank(lambda: self.owner.ensure_held() if self.owner is not None else None)

    def close(self) -> None:
        self._saves.close()

"""Resume from the newest intact checkpoint, the one the primary rank chose; a damaged one is named and passed over.

Only the primary rank lists the checkpoints: on a shared file system each node caches its own listing (NFS for
30-60 s), so after a fast requeue one node may not see the newest checkpoint yet, and ranks that chose for
themselves would load different steps, or run different numbers of collectives and hang. Newest first, the
primary compares every file of a complete checkpoint with the size and sha256 its COMPLETE marker recorded
(`CheckpointStore.verify`) and broadcasts its choice: the checkpoint, how many ranks wrote it, and each damaged
newer one it passed over. Every rank then opens that checkpoint's files by the path it was given (a rank that
cannot, within `VISIBLE_WITHIN_S`, ends the job: `CheckpointUnreachable`, exit code 7, never an older step
loaded silently) and loads it; a file that still cannot be read on any rank (`CheckpointDamaged`) passes the
whole job to the next older one. With none intact, one `NoIntactCheckpoint` error lists each damaged file and
says what to delete or restore.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline import dist
from pipeline.checkpoint.store import (
    MARKER,
    Checkpoint,
    CheckpointDamaged,
    CheckpointStore,
    NoIntactCheckpoint,
    load_state,
    saved_world_size,
)
from pipeline.dist import DistInfo, RankFailed, exit_codes

log = logging.getLogger(__name__)

# How long a rank retries opening the files of the checkpoint the primary chose before calling them missing.
# Listing a directory is what NFS caches longest, and the primary's choice is opened by name, which the client
# normally asks the server afresh; but a name this client recently looked up and found missing (before the
# checkpoint was written, on a node that ran the previous attempt) is trusted until the directory's cached
# attributes expire: 30-60 s by default (acdirmin, acdirmax). So a minute, at start-up, while the other ranks
# wait at a collective whose timeout (`engine.timeout_minutes`) is far longer; a file that is really not there
# costs that minute once, on the way to a clear error.
VISIBLE_WITHIN_S = 60.0
_RETRY_EVERY_S = 1.0


class CheckpointUnreachable(RuntimeError):
    """A rank cannot open the checkpoint the primary chose (a node whose file system lacks the run's files)."""

    exit_code = exit_codes.CHECKPOINT


@dataclass
class Resumption:
    """What was loaded: the engine holds the weights and optimizer state; the rest is for the training loop."""

    checkpoint: Checkpoint
    extra: dict[str, Any]  # what the loop saved beside the weights: progress, schedule, config, rng
    saved_world_size: int
    rank_state: dict[str, Any] | None  # this rank's loader position and RNG (None: another world size)
    skipped: list[str] = field(default_factory=list)  # each damaged newer checkpoint, with what is wrong with it


@dataclass
class _Choice:
    """The primary's choice, broadcast to every rank: the newest intact checkpoint older than the last one tried."""

    checkpoint: Checkpoint | None  # None: no intact one is left
    saved_world_size: int
    skipped: list[str]  # the damaged ones passed over on the way, each with what is wrong with it


def resume_latest_intact(store: CheckpointStore, engine, info: DistInfo) -> Resumption | None:
    """Load the newest intact checkpoint into `engine` (every rank calls this); None when the run has none yet."""
    listed = store.complete() if info.is_primary else []  # the primary's listing is the only one: see above
    skipped: list[str] = []
    older_than: int | None = None
    while True:
        choice = dist.from_primary(lambda: _choose(store, listed, older_than))
        skipped += choice.skipped
        if choice.checkpoint is None:
            break
        checkpoint = choice.checkpoint
        dist.on_every_rank(lambda: _open_every_file(checkpoint, info))  # else every rank ends: exit code 7
        try:
            loaded = dist.on_every_rank(lambda: _load(checkpoint, choice.saved_world_size, engine, info))
        except (CheckpointDamaged, RankFailed) as e:
            if isinstance(e, RankFailed) and e.exit_code != exit_codes.CHECKPOINT:
                raise  # not a damaged file: a real error, for the caller to report
            skipped.append(f"{checkpoint.path} ({e})")
            if info.is_primary:
                log.warning("checkpoint %s is damaged and is not used: %s", checkpoint.path, e)
            older_than = checkpoint.step
            continue
        loaded.skipped = skipped
        return loaded
    if skipped:
        raise NoIntactCheckpoint(
            f"no intact checkpoint to resume {store.root.parent} from: " + "; ".join(skipped) +
            ". Restore these checkpoint directories from a copy, or delete them to start the run again from step 0")
    return None


def _choose(store: CheckpointStore, listed: list[Checkpoint], older_than: int | None) -> _Choice:
    """On the primary: the newest checkpoint of `listed` older than step `older_than` whose files are all what was
    written, with how many ranks wrote it; each damaged newer one is named (and logged) on the way."""
    skipped = []
    for checkpoint in reversed(listed):
        if older_than is not None and checkpoint.step >= older_than:
            continue
        problem = store.verify(checkpoint)
        if not problem:
            return _Choice(checkpoint, saved_world_size(checkpoint.path), skipped)
        skipped.append(f"{checkpoint.path} ({problem})")
        log.warning("checkpoint %s is damaged and is not used: %s", checkpoint.path, problem)
    return _Choice(None, 0, skipped)


def _open_every_file(checkpoint: Checkpoint, info: DistInfo) -> None:
    """Open each file of `checkpoint` by name (its marker, every file it records), retrying for `VISIBLE_WITHIN_S`;
    CheckpointUnreachable, naming the file and this rank, when one still cannot be opened."""
    names = [MARKER, *checkpoint.meta.get("files", {})]
    deadline = time.monotonic() + VISIBLE_WITHIN_S
    warned = False
    while True:
        try:
            for name in names:
                with open(checkpoint.path / name, "rb"):
                    pass
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise CheckpointUnreachable(
                    f"rank {info.rank} cannot open {e.filename or checkpoint.path}, a file of the checkpoint of step "
                    f"{checkpoint.step} that rank 0 chose to resume from: {e.strerror or e} (tried for "
                    f"{VISIBLE_WITHIN_S:g} s); every node must see the run directory on the same shared file system "
                    "at the same path: fix this node's mount, then run the same command to resume") from None
            if not warned:
                log.warning("rank %d cannot open %s yet (%s): retrying for up to %g s", info.rank,
                            e.filename or checkpoint.path, e.strerror or e, VISIBLE_WITHIN_S)
                warned = True
            time.sleep(_RETRY_EVERY_S)


def _load(checkpoint: Checkpoint, saved_world: int, engine, info: DistInfo) -> Resumption:
    extra = engine.load(checkpoint.path, saved_world)
    rank_state = load_state(checkpoint.path / f"rank-{info.rank:05d}.pt") if saved_world == info.world_size else None
    return Resumption(checkpoint, extra, saved_world, rank_state)

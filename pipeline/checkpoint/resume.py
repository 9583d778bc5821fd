"""Resume from the newest checkpoint that is intact; a damaged one is named and passed over, never trusted.

Newest first, each complete checkpoint is checked before it is loaded: the primary rank compares every
file with the size and sha256 its COMPLETE marker recorded (`CheckpointStore.verify`), and every rank
learns the verdict; then every rank loads it, and a file that still cannot be read on any rank
(`CheckpointDamaged`) passes the whole job to the next older one. With none intact, one
`NoIntactCheckpoint` error lists each damaged file and says what to delete or restore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pipeline import dist
from pipeline.checkpoint.store import (
    Checkpoint,
    CheckpointDamaged,
    CheckpointStore,
    NoIntactCheckpoint,
    load_state,
    saved_world_size,
)
from pipeline.dist import DistInfo, RankFailed, exit_codes

log = logging.getLogger(__name__)


@dataclass
class Resumption:
    """What was loaded: the engine holds the weights and optimizer state; the rest is for the training loop."""

    checkpoint: Checkpoint
    extra: dict[str, Any]  # what the loop saved beside the weights: progress, schedule, config, rng
    saved_world_size: int
    rank_state: dict[str, Any] | None  # this rank's loader position and RNG (None: another world size)
    skipped: list[str] = field(default_factory=list)  # each damaged newer checkpoint, with what is wrong with it


def resume_latest_intact(store: CheckpointStore, engine, info: DistInfo) -> Resumption | None:
    """Load the newest intact checkpoint into `engine` (every rank calls this); None when the run has none yet."""
    skipped: list[str] = []
    for checkpoint in reversed(store.complete()):
        problem = dist.on_every_rank(lambda: store.verify(checkpoint) if info.is_primary else "", gather=True)[0]
        if not problem:
            try:
                loaded = dist.on_every_rank(lambda: _load(checkpoint, engine, info))
            except (CheckpointDamaged, RankFailed) as e:
                if isinstance(e, RankFailed) and e.exit_code != exit_codes.CHECKPOINT:
                    raise  # not a damaged file: a real error, for the caller to report
                problem = str(e)
            else:
                loaded.skipped = skipped
                return loaded
        skipped.append(f"{checkpoint.path} ({problem})")
        if info.is_primary:
            log.warning("checkpoint %s is damaged and is not used: %s", checkpoint.path, problem)
    if skipped:
        raise NoIntactCheckpoint(
            f"no intact checkpoint to resume {store.root.parent} from: " + "; ".join(skipped) +
            ". Restore these checkpoint directories from a copy, or delete them to start the run again from step 0")
    return None


def _load(checkpoint: Checkpoint, engine, info: DistInfo) -> Resumption:
    saved_world = saved_world_size(checkpoint.path)
    extra = engine.load(checkpoint.path, saved_world)
    rank_state = load_state(checkpoint.path / f"rank-{info.rank:05d}.pt") if saved_world == info.world_size else None
    return Resumption(checkpoint, extra, saved_world, rank_state)

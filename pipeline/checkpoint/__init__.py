"""A run's checkpoints: written whole or not at all, checked before they are trusted, resumed from the newest
intact one.

- `store`: checkpoint directories with a COMPLETE marker that records each file's size and sha256, rotation,
  the collective save, loading as data only;
- `background`: snapshots written by a thread while training goes on, completed in order;
- `resume`: the newest intact checkpoint loaded into an engine; damaged ones named and passed over.

The store's classes and errors are importable from here.
"""

from pipeline.checkpoint.store import (
                                       MARKER,
                                       Checkpoint,
                                       CheckpointDamaged,
                                       CheckpointDirError,
                                       CheckpointStore,
                                       CheckpointWriteError,
                                       NoIntactCheckpoint,
                                       WorldSizeChangeError,
                                       load_state,
                                       save_state,
                                       saved_world_size,
)

__all__ = ["MARKER", "Checkpoint", "CheckpointDamaged", "CheckpointDirError", "CheckpointStore", "CheckpointWriteError",
           "NoIntactCheckpoint", "WorldSizeChangeError", "load_state", "save_state", "saved_world_size"]

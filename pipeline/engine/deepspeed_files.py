"""DeepSpeed's checkpoint files written and read the way ours are: whole, flushed, recorded, loaded as data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.checkpoint.background import FileWriter
from pipeline.checkpoint.store import load_state
from pipeline.dist import from_primary


class DurableCheckpointFiles:
    """DeepSpeed's checkpoint file I/O, through ours (a DeepSpeed `CheckpointEngine`, installed on the engine).

    Saving: each file goes to the save's `FileWriter` (`writing_to`): written whole and flushed to disk, at once
    or from a snapshot by the writer's thread, its size and sha256 kept for the COMPLETE marker. A failure is
    kept, not raised: DeepSpeed's save passes barriers after its writes, and a rank raising out of it would leave
    the others waiting there; the writer raises it once DeepSpeed has returned. Loading: data only
    (`weights_only`), with the few plain classes DeepSpeed pickles into its ZeRO files allowed by name, and an
    error naming the file, where DeepSpeed's own engine unpickles anything; the model states file, which every
    rank reads, is read by the primary and broadcast.
    """

    name = "resnet-repro durable files"

    def __init__(self) -> None:
        self._writer: FileWriter | None = None

    @contextlib.contextmanager
    def writing_to(self, writer: FileWriter) -> Iterator[None]:
        """DeepSpeed's files of one save go to `writer`."""
        self._writer = writer
        try:
            yield
        finally:
            self._writer = None

    def create(self, info: Any) -> None:
        pass

    def commit(self, info: Any) -> bool:
        return True

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=exist_ok)
        except OSError as e:
            self._current_writer().fail(e)

    def save(self, state_dict: Any, path: str) -> None:
        self._current_writer().submit(Path(path), state_dict)

    def load(self, path: str, map_location: Any = None) -> Any:
        read = lambda: load_state(Path(path), allowed=_deepspeed_pickled_classes())  # noqa: E731
        if Path(path).name.endswith("_model_states.pt"):
            # The weights, the same file for every rank (each rank loads it at the same point of DeepSpeed's
            # load): read by the primary and broadcast. Each rank's ZeRO slice stays its own read.
            return from_primary(read)
        return read()

    def deferring_errors(self, work, *args: Any) -> None:
        """`work(*args)`, a write DeepSpeed does by itself (copying its recovery scripts), its OSError kept likewise."""
        try:
            work(*args)
        except OSError as e:
            self._current_writer().fail(e)

    def _current_writer(self) -> FileWriter:
        if self._writer is None:
            raise RuntimeError("DeepSpeed saved a checkpoint file outside DeepSpeedEngine.save")
        return self._writer

    # The rest of DeepSpeed's CheckpointEngine interface, as its base class answers it.
    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        return dp_rank == 0

    def is_decoupled(self) -> bool:
        return False

    def set_commit_info(self, info: Any) -> None:
        pass

    def get_commit_info(self) -> None:
        return None

    def cleanup(self) -> None:
        pass

    def preserves_storage_sharing(self) -> bool:
        return True


def _deepspeed_pickled_classes() -> list:
    """The plain data classes DeepSpeed pickles into its ZeRO optimizer files (a loss scaler's settings, the ZeRO
    stage, where a parameter's fragment lies): allowed by name when loading them as data."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler  # DeepSpeed: only with that engine
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]

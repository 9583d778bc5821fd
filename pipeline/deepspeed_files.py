"""DeepSpeed's checkpoint files written and read the way ours are: whole, flushed, recorded, loaded as data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from data_prep.durable import FileRecord
from pipeline.checkpoint import load_state, save_state


class DurableCheckpointFiles:
    """DeepSpeed's checkpoint file I/O, through ours (a DeepSpeed `CheckpointEngine`, installed on the engine).

    Saving: each file is serialised in memory, written whole and flushed to disk (`save_state`), and its size
    and sha256 are kept for the COMPLETE marker. A write that fails is remembered, not raised: DeepSpeed's
    save passes barriers after its writes, and a rank raising out of it would leave the others waiting
    there; `take_written` raises it once DeepSpeed has returned. Loading: data only (`weights_only`), with
    the few plain classes DeepSpeed pickles into its ZeRO files allowed by name, and an error naming the
    file, where DeepSpeed's own engine unpickles anything.
    """

    name = "resnet-repro durable files"

    def __init__(self) -> None:
        self._written: Dict[str, FileRecord] = {}
        self._error: OSError | None = None

    def create(self, info: Any) -> None:
        pass

    def commit(self, info: Any) -> bool:
        return True

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=exist_ok)
        except OSError as e:
            self._error = self._error or e

    def save(self, state_dict: Any, path: str) -> None:
        if self._error is not None:
            return  # the first failure stands; writing more would only fill the disk further
        try:
            self._written[path] = save_state(Path(path), state_dict)
        except OSError as e:
            self._error = e

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_state(Path(path), allowed=_deepspeed_pickled_classes())

    def deferring_errors(self, work, *args: Any) -> None:
        """`work(*args)`, a write DeepSpeed does by itself (copying its recovery scripts), its OSError kept likewise."""
        try:
            work(*args)
        except OSError as e:
            self._error = self._error or e

    def take_written(self) -> Dict[str, FileRecord]:
        """The files written since the last call (absolute path -> record); raises the first write error."""
        written, error = self._written, self._error
        self._written, self._error = {}, None
        if error is not None:
            raise error
        return written

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
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]

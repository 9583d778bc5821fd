"""Resume in one process, with the real DDP engine: a checkpoint that the sizes in its marker cannot vouch for (one
written before markers recorded them) and that fails to load passes the resume to the next older one; with none
left, one error names each. (Every rank resuming the primary's choice: tests/pipeline/train/test_resume_choice.py.)"""

import pytest
import torch

from pipeline.checkpoint.resume import resume_latest_intact
from pipeline.checkpoint.store import CheckpointStore, NoIntactCheckpoint, save_state
from pipeline.config import load_config
from pipeline.dist import DistInfo
from pipeline.engine import build_engine
from pipeline.models import build


def engine():
    cfg = load_config(None, [])
    return build_engine(cfg.engine, build("cifar_resnet8", num_classes=10), cfg.optim, 0.1, DistInfo(),
                        torch.device("cpu"), micro_batch=4)


def save_without_records(store: CheckpointStore, step: int, trained) -> None:
    """A checkpoint as the loop writes one, but with a marker that records no file sizes."""
    staging = store.begin(step)
    save_state(staging / "state.pt", {"model": trained.module.state_dict(), "optimizer": trained.optimizer.state_dict(),
                                      "scaler": trained.scaler.state_dict(), "progress": {"step": step}})
    save_state(staging / "rank-00000.pt", {"loader": {}, "rng": {}})
    store.commit(staging, step)


def test_a_checkpoint_that_fails_to_load_passes_the_resume_to_the_older_one(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=5)
    trained = engine()
    for step in (8, 16):
        save_without_records(store, step, trained)
    newest = store.latest().path / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])

    resumed = resume_latest_intact(store, engine(), DistInfo())
    assert resumed.checkpoint.step == 8 and resumed.extra["progress"] == {"step": 8}
    assert resumed.saved_world_size == 1 and resumed.rank_state == {"loader": {}, "rng": {}}
    assert len(resumed.skipped) == 1 and resumed.skipped[0].startswith(
        f"{newest.parent} (cannot load checkpoint state {newest}: ")

    older = store.complete()[0].path / "state.pt"
    older.write_bytes(b"")
    with pytest.raises(NoIntactCheckpoint) as none_left:
        resume_latest_intact(store, engine(), DistInfo())
    assert f"{newest.parent} (cannot load" in str(none_left.value) and f"{older.parent} (cannot load" in \
        str(none_left.value)

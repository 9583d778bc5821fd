"""Checkpoints: complete or ignored, rotation, data-only loading, and a writer killed mid-write."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint.store import CheckpointStore, load_state, save_state


def save(store, step, **meta):
    staging = store.begin(step)
    save_state(staging / "state.pt", {"step": step, "w": torch.full((3,), float(step))})
    return store.commit(staging, step, meta)


def test_latest_and_rotation_keep_last_and_best(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2, keep_best=True)
    for step, err in [(100, 9.0), (200, 5.0), (300, 7.0), (400, 8.0)]:
        save(store, step, val_top1_error=err)
    assert [c.step for c in store.complete()] == [200, 300, 400]  # 200 is the best, 300/400 the last two
    assert store.latest().step == 400 and store.best().step == 200
    state = load_state(store.latest().path / "state.pt")
    assert state["step"] == 400 and torch.equal(state["w"], torch.full((3,), 400.0))


def test_incomplete_checkpoint_is_skipped_with_warning(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    save(store, 100)
    broken = tmp_path / "step-000000200"  # renamed into place but without its marker
    broken.mkdir()
    (broken / "state.pt").write_bytes(b"half")
    staging = store.begin(300)  # a writer that never committed
    (staging / "state.pt").write_bytes(b"half")
    with caplog.at_level(logging.WARNING):
        assert store.latest().step == 100
    assert "step-000000200" in caplog.text and "step-000000300.tmp" in caplog.text


def test_writer_killed_mid_write_leaves_previous_checkpoint(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    save(store, 100)
    script = textwrap.dedent(f"""
        import time, torch
        from pipeline.checkpoint import CheckpointStore, save_state
        store = CheckpointStore({str(tmp_path)!r})
        staging = store.begin(200)
        save_state(staging / "state.pt", {{"w": torch.zeros(1000)}})
        open({str(tmp_path / "ready")!r}, "w").close()
        time.sleep(60)          # killed here, before commit
        store.commit(staging, 200)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.time() < deadline, "writer did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with caplog.at_level(logging.WARNING):
        latest = store.latest()
    assert latest.step == 100 and "did not finish" in caplog.text
    save(store, 300)  # the next save cleans nothing it should keep and works
    assert [c.step for c in store.complete()] == [100, 300]


def test_a_save_records_every_file_and_verify_finds_what_changed(tmp_path):
    store = CheckpointStore(tmp_path)

    def write(staging):
        (staging / "sub").mkdir()
        return {"state.pt": save_state(staging / "state.pt", {"w": torch.arange(1000.0)}),
                "sub/rank-00000.pt": save_state(staging / "sub" / "rank-00000.pt", {"r": torch.ones(10)})}

    checkpoint = store.save(4, True, write, {"val_top1_error": 3.0})
    marker = json.loads((checkpoint.path / "COMPLETE").read_text())
    assert set(marker["files"]) == {"state.pt", "sub/rank-00000.pt"} and marker["val_top1_error"] == 3.0
    latest = store.latest()
    assert latest.step == 4 and store.verify(latest) == ""
    state = latest.path / "state.pt"
    state.write_bytes(state.read_bytes()[:-1] + b"x")  # same size, other bytes
    assert store.verify(latest) == \
        f"{state}: its sha256 is not that of the file written (the data was changed or damaged)"
    state.write_bytes(b"short")
    (latest.path / "sub" / "rank-00000.pt").unlink()
    problems = store.verify(latest).split("; ")
    assert problems[0].startswith(f"{state}: 5 bytes,")
    assert problems[1] == f"{latest.path / 'sub' / 'rank-00000.pt'}: missing"


def test_a_failed_save_keeps_the_previous_checkpoint_and_says_so(tmp_path):
    from pipeline.checkpoint.store import CheckpointWriteError

    store = CheckpointStore(tmp_path)
    save(store, 4)

    def write(staging):
        raise OSError(28, "No space left on device", str(staging / "state.pt"))

    with pytest.raises(CheckpointWriteError) as failed:
        store.save(8, True, write)
    assert str(failed.value) == (
        f"cannot write the checkpoint of step 8 in {tmp_path}: No space left on device "
        f"({tmp_path / 'step-000000008.tmp' / 'state.pt'}); the latest complete checkpoint, "
        f"{tmp_path / 'step-000000004'} (step 4), is kept: free space or fix the directory, then run the same "
        "command to resume from it")
    assert [c.step for c in store.complete()] == [4] and not (tmp_path / "step-000000008.tmp").exists()


def test_state_loading_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "state.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(RuntimeError, match="cannot load checkpoint state"):
        load_state(path)
    assert not (tmp_path / "pwned").exists()


def resave_killed_between_renames(store, step, monkeypatch):
    """A re-save of `step` whose job dies after the old checkpoint became `.replaced`, before the staging copy
    took its name: the rename of the staging directory is where it is killed."""
    rename = Path.rename

    def killed(self, target):
        if self.name.endswith(".tmp"):
            raise KeyboardInterrupt("killed between the two renames")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(step, True, lambda staging: {"state.pt": save_state(staging / "state.pt", {"w": torch.ones(3)})})
    monkeypatch.undo()
    final = store.root / f"step-{step:09d}"
    assert not final.exists() and (store.root / f"{final.name}.replaced").is_dir()
    assert (store.root / f"{final.name}.tmp" / "COMPLETE").is_file()
    return final


@pytest.mark.parametrize("staging, kept", [("complete", 1.0), ("damaged", 8.0), ("gone", 8.0)])
def test_a_resave_killed_between_its_renames_keeps_the_step(tmp_path, monkeypatch, caplog, staging, kept):
    store = CheckpointStore(tmp_path)
    store.save(8, True, lambda path: {"state.pt": save_state(path / "state.pt", {"w": torch.full((3,), 8.0)})})
    final = resave_killed_between_renames(store, 8, monkeypatch)
    copy = tmp_path / f"{final.name}.tmp"
    if staging == "damaged":
        (copy / "state.pt").write_bytes(b"half")
    elif staging == "gone":
        shutil.rmtree(copy)

    restarted = CheckpointStore(tmp_path)  # the next start, as RunCheckpoints.prepare does it
    with caplog.at_level(logging.WARNING):
        restarted.remove_unfinished()
    source = f"{final.name}.tmp" if staging == "complete" else f"{final.name}.replaced"
    assert f"restored {final} from {source}" in caplog.text
    latest = restarted.latest()
    assert latest.step == 8 and restarted.verify(latest) == ""
    assert torch.equal(load_state(latest.path / "state.pt")["w"], torch.full((3,), kept))
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # nothing left beside it

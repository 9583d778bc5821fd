"""Faults around a data_prep run: concurrent runs into one --out (the per-task lock: refusal naming the
holder, array siblings allowed, another --num-tasks refused, stale locks taken over, heartbeat, release on
interrupt) and odd inputs (file names that are not UTF-8, hidden and AppleDouble files, empty class
folders, images above the pixel limit or PIL's decompression-bomb limit)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest

from data_prep.lock import FileLock, OutputLock, holder_info, lock_path, read_lock
from data_prep.manifest import load_manifest
from data_prep.synth import synth_imagenet
from tests.support.prep import ROOT, prep, run_cli

# A process holding a task's lock through the real lock code until its stdin closes; it prints one line
# once the lock is held, so the test waits on that event rather than on a sleep.
HOLDER = """
import sys
from data_prep.lock import OutputLock
out, task, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with OutputLock(out, task, tasks, argv=["python", "-m", "data_prep", "imagenet", "--out", out, "--holder-marker"]):
    print("locked", flush=True)
    sys.stdin.read()
"""


class Holder:
    """`with Holder(out, task, tasks) as pid:` - another process holds that lock inside the block."""

    def __init__(self, out: Path, task: int = 0, tasks: int = 1) -> None:
        self.args = [sys.executable, "-c", HOLDER, str(out), str(task), str(tasks)]

    def __enter__(self) -> int:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked", "the holder process failed to take the lock"
        return self.proc.pid

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()  # the holder leaves its `with` block: releases the lock
        assert self.proc.wait(timeout=60) == 0


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tiny_imagenet(src: Path) -> None:
    synth_imagenet(src, classes=2, per_class=2, val_per_class=1)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _write_lock(out: Path, info: dict, task: int = 0, tasks: int = 1) -> Path:
    path = lock_path(out, task, tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return path


# --- the output lock ------------------------------------------------------------------------------------


def test_second_run_is_refused_naming_the_running_one_and_merge_needs_no_lock(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    with Holder(out) as pid:
        proc = run_cli("imagenet", "--src", src, "--out", out, "--no-progress", check=False)
        assert proc.returncode == 2
        err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1, proc.stderr  # one clear line, no traceback
        assert "Traceback" not in proc.stderr
        for part in (socket.gethostname(), f"pid {pid}", "started 20", "--holder-marker", "task 0 of 1"):
            assert part in err[0], (part, err[0])
        # merge only reads the records and writes the same bytes: it takes no lock.
        assert run_cli("merge", out).returncode == 0
    assert not lock_path(out, 0, 1).exists()  # released by the holder
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    assert not lock_path(out, 0, 1).exists()  # and by this run


def test_array_siblings_run_together_but_another_num_tasks_is_refused(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    with Holder(out, task=0, tasks=2):
        # Task 1 of the same 2-task array writes its own shards next to task 0: allowed.
        assert prep("imagenet", "--src", src, "--out", out, "--workers", "1", "--samples-per-shard", "4",
                    "--num-tasks", "2", "--task-id", "1") == 0
        assert "task 1/2 done" in capsys.readouterr().err
        # A 1-task run would split the shards differently: refused while the 2-task run is alive.
        assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 2
        err = capsys.readouterr().err
        assert "another --num-tasks" in err and "task-0-of-2.lock" in err and "--num-tasks 1" in err
    assert not lock_path(out, 0, 1).exists()  # the refused run left no lock of its own behind


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    pid = _dead_pid()
    path = _write_lock(out, {"host": socket.gethostname(), "pid": pid, "start": "2024-01-01T00:00:00+00:00",
                             "argv": ["python", "-m", "data_prep", "killed-run"]})
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    err = capsys.readouterr().err
    assert f"taking over the stale lock {path}" in err and f"pid {pid} is not running" in err
    assert "killed-run" in err
    assert not path.exists() and (out / "manifest.json").is_file()


def test_lock_from_another_host_is_judged_by_its_heartbeat(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    # pid 1 is alive here, but on another host a pid means nothing: only the heartbeat (mtime) counts.
    info = {"host": "other-node.example", "pid": 1, "start": "2024-01-01T00:00:00+00:00", "argv": ["remote-run"]}
    path = _write_lock(out, info)
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 2
    assert "other-node.example" in capsys.readouterr().err
    old = time.time() - 20 * 60  # no heartbeat for 20 minutes: that run is dead
    os.utime(path, (old, old))
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    assert "no heartbeat for" in capsys.readouterr().err
    assert not path.exists()


def test_heartbeat_is_refreshed_from_the_work_loop(tmp_path: Path) -> None:
    from data_prep.prepare import Options, _Progress, _run, plan
    from data_prep.sources.imagenet import load_imagenet

    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    tasks = plan(load_imagenet(src), out, Options(samples_per_shard=4, fsync=False))
    out.mkdir()
    (out / "_parts").mkdir()
    for workers in (1, 2):  # the in-process path and the pool's poll loop
        beats: list[int] = []
        _run(tasks, workers, _Progress(1, False), lambda: beats.append(1))
        assert beats, f"workers={workers}: the heartbeat was never called"
    # beat() refreshes the lock's mtime once heartbeat_s has passed.
    with OutputLock(out, 0, 1, heartbeat_s=0) as lock:
        os.utime(lock.path, (0, 0))
        lock.beat()
        assert time.time() - lock.path.stat().st_mtime < 60


def test_a_holder_whose_lock_was_taken_over_knows_it_and_leaves_the_new_lock_alone(tmp_path: Path) -> None:
    """A holder paused past the staleness (a suspended job) is judged dead and its lock taken over: resumed, its
    heartbeat finds the file naming another holder, says so (`lost`, `holds()`), and neither refreshes nor deletes
    the new lock. (The takeover is the real one; `reclaim` stands for the 10 minutes without a heartbeat that another
    host would wait: on this host a paused holder's pid is alive.)"""
    path = tmp_path / "run.lock"
    holder = FileLock(path, holder_info(argv=["the paused run"]), heartbeat_s=0.05)
    holder.acquire()
    assert holder.holds()
    taker = FileLock(path, holder_info(argv=["the start that took over"]),
                     reclaim=lambda info: "no heartbeat for 600 s (as seen from another host)")
    taker.acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    holder.start_heartbeat()
    deadline = time.monotonic() + 60
    while holder.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.lost is not None and "taken over by" in holder.lost and "the start that took over" in holder.lost
    assert not holder.holds()
    assert path.stat().st_mtime == old  # the new holder's heartbeat, not the old one's
    holder.release()
    assert read_lock(path) == taker.info  # left to its holder
    taker.release()
    assert not path.exists()


def test_the_progress_bar_says_one_rate(capsys) -> None:
    """The images/s of the bar and the MB/s beside it are over the same time: 1,000 bytes an image here, so
    MB/s x 1,000 is the bar's images/s (an own img/s in the postfix once said a tenth of the bar's)."""
    from data_prep.prepare import _Progress

    progress = _Progress(320, True)
    for _ in range(10):
        time.sleep(0.02)
        progress(32, 32_000)
    progress.close()
    final = capsys.readouterr().err.split("\r")[-1]
    images_per_s = float(final.split("img/s")[0].rsplit(" ", 1)[-1])
    mb_per_s = float(final.split(" MB/s")[0].rsplit(" ", 1)[-1])
    assert final.count("img/s") == 1 and abs(mb_per_s * 1000 / images_per_s - 1) < 0.05, final


def test_lock_is_released_on_keyboard_interrupt(tmp_path: Path, monkeypatch) -> None:
    import data_prep.prepare as prepare_mod
    from data_prep.sources.imagenet import load_imagenet

    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)

    def interrupted(*args, **kwargs):
        assert lock_path(out, 0, 1).is_file()  # held while the shards are written
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare(load_imagenet(src), out, prepare_mod.Options(progress=False, fsync=False))
    assert not lock_path(out, 0, 1).exists()


# --- odd inputs -----------------------------------------------------------------------------------------


def _first_class(src: Path) -> Path:
    return sorted((src / "train").iterdir())[0]


def _shard_images(out: Path) -> list[bytes]:
    images = []
    for split in load_manifest(out).splits.values():
        for shard in split.shards:
            with tarfile.open(shard.tar) as tar:
                images += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    return images


def _check_invariant(out: Path) -> None:
    for split in load_manifest(out).splits.values():
        assert split.num_samples + split.rejected == split.found


def test_file_names_that_are_not_utf8_are_processed_or_listed(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    folder = os.fsencode(_first_class(src))
    good = sorted(p for p in _first_class(src).iterdir() if p.stat().st_size > 1000)[0].read_bytes()
    (Path(os.fsdecode(folder + b"/caf\xe9.JPEG"))).write_bytes(good)  # Latin-1 name, a valid image
    (Path(os.fsdecode(folder + b"/caf\xe9 bad.JPEG"))).write_bytes(b"not an image")
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0  # the run does not stop
    _check_invariant(out)
    assert load_manifest(out).splits["train"].found == 2 * 2 + 6 + 2
    assert good in _shard_images(out)
    # The rejected one is listed; its name survives JSON and gives back the file's exact bytes.
    rows = [r for r in _read_jsonl(out / "rejected.jsonl") if os.fsencode(r["path"]).endswith(b"caf\xe9 bad.JPEG")]
    assert len(rows) == 1 and "not an image" in rows[0]["reason"]
    assert os.fsencode(rows[0]["path"]) == folder + b"/caf\xe9 bad.JPEG"


def test_hidden_nested_and_dangling_files_are_counted_and_listed(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    cls = _first_class(src)
    hidden = [cls / f"._{cls.name}_1.JPEG", cls / ".DS_Store", src / "val" / "._ILSVRC2012_val_00000001.JPEG"]
    for p in hidden:
        p.write_bytes(b"\x00\x05\x16\x07AppleDouble")
    # A real image one folder too deep, and links whose targets are gone: found, not written, each listed.
    nested = cls / "copy" / "deeper" / f"{cls.name}_copy.JPEG"
    nested.parent.mkdir(parents=True)
    shutil.copy(sorted(cls.glob("*.JPEG"))[-1], nested)
    dangling = [cls / "gone.JPEG", src / "val" / "ILSVRC2012_val_00000002_gone.JPEG"]
    for link in dangling:
        link.symlink_to(tmp_path / "no-such-file.JPEG")
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    m = load_manifest(out)
    assert (m.splits["train"].found, m.splits["val"].found) == (2 * 2 + 6 + 2 + 1 + 1, 2 * 1 + 2 + 1 + 1)
    _check_invariant(out)
    reasons = {r["path"]: r["reason"] for r in _read_jsonl(out / "rejected.jsonl")}
    assert "AppleDouble" in reasons[str(hidden[0])] and "AppleDouble" in reasons[str(hidden[2])]
    assert "dot-file" in reasons[str(hidden[1])]
    assert "copy/, a sub-folder of its class folder" in reasons[str(nested)]
    assert all("dangling symbolic link" in reasons[str(link)] for link in dangling)


def test_merge_refuses_a_manifest_of_a_version_it_does_not_know(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    manifest = out / "manifest.json"
    newer = {**json.loads(manifest.read_text()), "version": 99}
    manifest.write_text(json.dumps(newer))
    capsys.readouterr()
    from data_prep.__main__ import main

    assert main(["merge", str(out)]) == 2
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 2  # nor is it prepared into
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all(line.startswith(f"error: {manifest}: format") and "version 99" in line
                                    for line in errors)
    assert json.loads(manifest.read_text()) == newer  # untouched


def test_empty_imagenet_class_folder_is_an_error_naming_it(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_imagenet(src)
    empty = src / "train" / "n01443537"
    for p in empty.iterdir():
        p.unlink()
    (empty / ".DS_Store").write_bytes(b"x")  # only a hidden file: still no image
    assert prep("imagenet", "--src", src, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"error: {empty}: empty class folder" in err and "incomplete" in err


def test_empty_folder_class_is_a_warning_on_stderr_and_in_warnings_jsonl(tmp_path: Path) -> None:
    inet, src, out = tmp_path / "inet", tmp_path / "tree", tmp_path / "out"
    _tiny_imagenet(inet)
    shutil.copytree(inet / "train", src)
    (src / "zz_empty").mkdir()
    proc = run_cli("folder", "--src", src, "--out", out, "--no-progress", "--no-fsync", "--workers", "1")
    assert f"warning: {src / 'zz_empty'}: empty class folder" in proc.stderr
    assert f"warnings (e.g. empty class folders): {out / 'warnings.jsonl'}" in proc.stderr
    rows = _read_jsonl(out / "warnings.jsonl")
    assert [(r["split"], r["path"]) for r in rows] == [("train", str(src / "zz_empty"))]
    m = load_manifest(out)
    assert m.classes[-1].id == "zz_empty"  # the class keeps its index
    _check_invariant(out)


def _solid_jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 30)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def _with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header (SOF0) claiming another size: a cheap decompression-bomb header."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 9:]


def test_image_above_the_default_pixel_limit_is_shrunk_without_pil_warnings() -> None:
    from PIL import Image

    from data_prep.images import DEFAULT_MAX_PIXELS, Encoding, prepare_jpeg

    # 9600x9600 = 92 MP: above the default limit (40 MP) and above PIL's own warning threshold (89.5 MP),
    # where PIL used to let it through with only a DecompressionBombWarning.
    data = _solid_jpeg(9600, 9600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape
        out, fix = prepare_jpeg(data, Encoding())
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.size[0] == img.size[1]  # aspect kept
    assert DEFAULT_MAX_PIXELS * 0.99 < img.size[0] * img.size[1] <= DEFAULT_MAX_PIXELS
    assert "9600x9600" in fix and "--max-pixels" in fix and f"{img.size[0]}x{img.size[1]}" in fix
    # --max-pixels 0: no limit of our own, the original bytes are kept.
    assert prepare_jpeg(data, Encoding(max_pixels=0)) == (data, None)


def test_pixel_limit_and_decompression_bombs_are_listed(tmp_path: Path) -> None:
    from PIL import Image

    inet, src = tmp_path / "inet", tmp_path / "tree"
    _tiny_imagenet(inet)
    shutil.copytree(inet / "train", src)
    # Claims 14000x14000 = 196 MP: above PIL's error limit (179 MP).
    bomb = sorted(p for p in src.iterdir() if p.is_dir())[0] / "bomb.JPEG"
    bomb.write_bytes(_with_size(_solid_jpeg(16, 16), 14000, 14000))
    limit = 20_000  # the synth images are 160-400 px on the long side: most are above this
    out = tmp_path / "out"
    assert prep("folder", "--src", src, "--out", out, "--workers", "1", "--max-pixels", str(limit)) == 0
    _check_invariant(out)
    shrunk = [c for c in _read_jsonl(out / "converted.jsonl") if "above the pixel limit" in c["fix"]]
    assert len(shrunk) >= 5
    for data in _shard_images(out):
        w, h = Image.open(io.BytesIO(data)).size
        assert w * h <= limit
    rejected = {r["path"]: r["reason"] for r in _read_jsonl(out / "rejected.jsonl")}
    assert "decompression-bomb" in rejected[str(bomb)]
    # With the limit off, PIL's bomb limit still rejects it (listed, not a crash, not written).
    out0 = tmp_path / "out0"
    assert prep("folder", "--src", src, "--out", out0, "--workers", "1", "--max-pixels", "0") == 0
    assert "decompression-bomb" in {r["path"]: r["reason"] for r in _read_jsonl(out0 / "rejected.jsonl")}[str(bomb)]
    assert not _read_jsonl(out0 / "converted.jsonl") or all(
        "pixel limit" not in c["fix"] for c in _read_jsonl(out0 / "converted.jsonl"))

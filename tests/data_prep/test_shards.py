"""The writer: determinism, kill-and-resume, distributed tasks + merge, DALI index format, verify, manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.index import parse_index
from data_prep.manifest import ManifestError, load_manifest
from data_prep.synth import synth_imagenet
from tests.support.prep import ROOT, prep, run_cli, shard_digests


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ilsvrc")
    synth_imagenet(d, classes=4, per_class=6, val_per_class=2)
    return d


def test_same_input_and_seed_give_identical_shards(src: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert prep("imagenet", "--src", src, "--out", a, "--workers", "1", "--samples-per-shard", "5") == 0
    assert prep("imagenet", "--src", src, "--out", b, "--workers", "2", "--samples-per-shard", "5") == 0
    assert prep("imagenet", "--src", src, "--out", c, "--workers", "1", "--samples-per-shard", "5",
                "--seed", "1") == 0
    assert shard_digests(a) == shard_digests(b)
    assert shard_digests(a)["train-000000.tar"] != shard_digests(c)["train-000000.tar"]


def test_shards_are_shuffled_not_class_sorted(src: Path, tmp_path: Path) -> None:
    import tarfile

    assert prep("imagenet", "--src", src, "--out", tmp_path, "--samples-per-shard", "6", "--workers", "1") == 0
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        labels = [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
    assert len(set(labels)) > 1


def test_index_matches_dalis_wds2idx(src: Path, tmp_path: Path) -> None:
    from wds2idx import IndexCreator

    out = tmp_path / "out"
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1", "--samples-per-shard", "7") == 0
    for shard in load_manifest(out).splits["train"].shards:
        with IndexCreator(str(shard.tar), str(tmp_path / "ref.idx"), verbose=False) as ic:
            ic.create_index()
        assert shard.index.read_text() == (tmp_path / "ref.idx").read_text()
        assert len(parse_index(shard.index)) == shard.num_samples


def test_kill_and_rerun_gives_the_uninterrupted_shards(tmp_path: Path) -> None:
    src = tmp_path / "src"
    synth_imagenet(src, classes=4, per_class=25, val_per_class=2)
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["imagenet", "--src", src, "--out", out, "--workers", "1", "--samples-per-shard", "2", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "_parts" / "train-000004.json").exists() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the writer finished before it could be killed"
    done_before = len(list((out / "_parts").glob("train-*.json")))
    assert done_before >= 5
    assert prep(*map(str, args[:-1])) == 0  # rerun (resumes)
    assert prep("imagenet", "--src", src, "--out", ref, "--workers", "2", "--samples-per-shard", "2") == 0
    assert shard_digests(out) == shard_digests(ref)
    assert not list(out.glob("*.tmp"))


def test_tasks_write_disjoint_parts_and_merge(src: Path, tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    common = ["--src", src, "--workers", "1", "--samples-per-shard", "4"]
    assert prep("imagenet", *common, "--out", ref) == 0
    for task in (2, 0):
        assert prep("imagenet", *common, "--out", out, "--num-tasks", "3", "--task-id", str(task)) == 0
    assert not (out / "manifest.json").exists()
    with pytest.raises(RuntimeError, match="not written yet"):
        from data_prep.merge import merge

        merge(out)
    mine = {p.name for p in out.glob("*.tar")}
    assert prep("imagenet", *common, "--out", out, "--num-tasks", "3", "--task-id", "1") == 0
    assert not mine & ({p.name for p in out.glob("*.tar")} - mine) and (out / "manifest.json").exists()
    assert shard_digests(out) == shard_digests(ref)
    run_cli("merge", out)  # the explicit merge step is idempotent
    assert shard_digests(out) == shard_digests(ref)


def _write_often(path: Path, times: int) -> None:
    from data_prep.durable import write_file

    for i in range(times):
        write_file(path, f"{os.getpid()} {i}".encode())


def test_array_tasks_writing_the_same_file_together_do_not_collide(tmp_path: Path) -> None:
    # The tasks of a job array write the same plan.json and manifest.json at the same moment (CI saw a
    # task fail renaming a temporary file that another task had already renamed away).
    import multiprocessing

    path = tmp_path / "plan.json"
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_often, args=(path, 300)) for _ in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0] * 4
    assert path.read_text().split()[1] == "299" and list(tmp_path.iterdir()) == [path]


def test_verify_names_flipped_and_truncated_shards(src: Path, tmp_path: Path) -> None:
    assert prep("imagenet", "--src", src, "--out", tmp_path, "--workers", "1", "--samples-per-shard", "8") == 0
    assert run_cli("verify", tmp_path).returncode == 0
    flipped, cut = tmp_path / "train-000001.tar", tmp_path / "val-000000.tar"
    data = bytearray(flipped.read_bytes())
    data[1500] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:3000])
    proc = run_cli("verify", tmp_path, check=False)
    assert proc.returncode != 0
    assert "train-000001.tar" in proc.stderr and "sha256" in proc.stderr
    assert "val-000000.tar" in proc.stderr and "truncated" in proc.stderr
    assert "train-000000.tar" not in proc.stderr


def test_verify_catches_an_undecodable_image_with_a_matching_checksum(src: Path, tmp_path: Path) -> None:
    """A shard rewritten consistently (sha256 in the manifest updated) but with a broken image."""
    import hashlib

    assert prep("imagenet", "--src", src, "--out", tmp_path, "--workers", "1", "--samples-per-shard", "8") == 0
    shard = tmp_path / "train-000000.tar"
    entry = parse_index(tmp_path / "train-000000.idx")[0][0]
    data = bytearray(shard.read_bytes())
    data[entry[1] + 2: entry[1] + entry[2]] = bytes(entry[2] - 2)  # zero everything after the SOI marker
    shard.write_bytes(bytes(data))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("verify", tmp_path, check=False)
    assert proc.returncode != 0 and "train-000000.tar" in proc.stderr and "decode" in proc.stderr


def test_load_manifest_rejects_unknown_versions_naming_the_file(src: Path, tmp_path: Path) -> None:
    assert prep("imagenet", "--src", src, "--out", tmp_path, "--workers", "1") == 0
    m = load_manifest(tmp_path)
    assert m.splits["train"].shards[0].tar == (tmp_path / "train-000000.tar").resolve()
    assert m.encoding.reencoded is False and m.seed == 0
    raw = json.loads((tmp_path / "manifest.json").read_text())
    for field, value in (("version", 2), ("format", "something-else")):
        bad = dict(raw, **{field: value})
        (tmp_path / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match="manifest.json"):
            load_manifest(tmp_path / "manifest.json")


def test_reencode_max_side(src: Path, tmp_path: Path) -> None:
    import io
    import tarfile

    from PIL import Image

    assert prep("imagenet", "--src", src, "--out", tmp_path, "--workers", "1", "--max-side", "64",
                "--quality", "80") == 0
    m = load_manifest(tmp_path)
    assert m.encoding.reencoded and m.encoding.max_side == 64 and m.encoding.quality == 80
    with tarfile.open(m.splits["train"].shards[0].tar) as tar:
        sizes = [Image.open(io.BytesIO(tar.extractfile(x).read())).size for x in tar if x.name.endswith(".jpg")]
    assert sizes and max(max(s) for s in sizes) == 64

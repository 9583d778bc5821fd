"""Sources and quirks: every ImageNet layout, folder trees, CIFAR-10/100, the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_prep.manifest import load_manifest
from data_prep.safe_pickle import UnsafePickleError, load_pickle
from data_prep.synth import synth_cifar, synth_imagenet
from tests.support.prep import prep, rel_paths


def _read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_quirks(src: Path, out: Path, quirks: dict) -> None:
    """Converted quirks are written (as RGB JPEG), rejected ones listed with a reason; counts add up."""
    import io
    import tarfile

    from PIL import Image

    m = load_manifest(out)
    for split in m.splits.values():
        assert split.num_samples + split.rejected == split.found  # the invariant
    rejected = _read_jsonl(out / "rejected.jsonl")
    assert rel_paths(rejected, src) == sorted(q["path"] for q in quirks["rejected"])
    assert all(r["reason"] for r in rejected)
    reasons = {Path(r["path"]).name: r["reason"] for r in rejected}
    by_kind = {q["quirk"]: Path(q["path"]).name for q in quirks["rejected"]}
    assert "empty" in reasons[by_kind["empty"]] and "truncated" in reasons[by_kind["truncated"]]
    assert "not an image" in reasons[by_kind["text"]]
    converted = _read_jsonl(out / "converted.jsonl")
    assert rel_paths(converted, src) == sorted(q["path"] for q in quirks["converted"])
    keys = {c["key"] for c in converted}
    seen = set()
    for split in m.splits.values():
        for shard in split.shards:
            with tarfile.open(shard.tar) as tar:
                for member in tar:
                    key = member.name.split(".")[0]
                    if key in keys and member.name.endswith(".jpg"):
                        img = Image.open(io.BytesIO(tar.extractfile(member).read()))
                        assert (img.format, img.mode) == ("JPEG", "RGB")
                        seen.add(key)
    assert seen == keys


@pytest.mark.parametrize("kind", ["official", "kaggle"])
def test_imagenet_layouts_and_quirks(tmp_path: Path, kind: str) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    quirks = synth_imagenet(src, classes=4, per_class=5, val_per_class=2, kaggle=kind == "kaggle")
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1", "--samples-per-shard", "8") == 0
    m = load_manifest(out)
    assert [c.id for c in m.classes] == sorted(c.id for c in m.classes)
    assert m.classes[0].id == "n01440764" and m.classes[0].name == "tench, Tinca tinca"
    assert set(m.splits) == {"train", "val"}
    assert m.splits["train"].found == 4 * 5 + 6 and m.splits["val"].found == 4 * 2 + 2
    assert m.stats.num_images > 0 and all(0 < v < 255 for v in m.stats.mean)
    _check_quirks(src, out, quirks)
    # Val labels went through the devkit's reversed ILSVRC2012_IDs / the CSV: compare with the synth's truth.
    _check_val_labels(src, out, kind)


def _check_val_labels(src: Path, out: Path, kind: str) -> None:
    """Each val sample's label equals the class of the file it came from (by comparing bytes)."""
    import tarfile

    m = load_manifest(out)
    wnid_of = {}
    if kind == "kaggle":
        import csv

        with open(src / "LOC_val_solution.csv") as f:
            for row in csv.DictReader(f):
                wnid_of[row["ImageId"] + ".JPEG"] = row["PredictionString"].split()[0]
        val = src / "ILSVRC/Data/CLS-LOC/val"
    else:
        import scipy.io

        syn = scipy.io.loadmat(str(src / "ILSVRC2012_devkit_t12/data/meta.mat"), squeeze_me=True)["synsets"]
        id2w = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in syn}
        truth = (src / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read_text().split()
        wnid_of = {f"ILSVRC2012_val_{n:08d}.JPEG": id2w[int(t)] for n, t in enumerate(truth, start=1)}
        val = src / "val"
    by_bytes = {(val / name).read_bytes(): w for name, w in wnid_of.items()}
    index = {c.id: c.index for c in m.classes}
    checked = 0
    for shard in m.splits["val"].shards:
        with tarfile.open(shard.tar) as tar:
            files = {mem.name: tar.extractfile(mem).read() for mem in tar}
        for name, data in files.items():
            if name.endswith(".jpg") and data in by_bytes:
                assert int(files[name[:-4] + ".cls"]) == index[by_bytes[data]]
                checked += 1
    assert checked == 8  # every unconverted val image


def test_imagenet_val_in_class_folders(tmp_path: Path) -> None:
    """Layout (c): val already sorted into class folders (devkit labels not needed)."""
    src, out = tmp_path / "src", tmp_path / "out"
    synth_imagenet(src, classes=3, per_class=3, val_per_class=2)
    shutil.rmtree(src / "val")
    for wnid in os.listdir(src / "train"):
        (src / "val" / wnid).mkdir(parents=True)
        for f in sorted(os.listdir(src / "train" / wnid))[:2]:
            shutil.copy(src / "train" / wnid / f, src / "val" / wnid / f"val_{f}")
    shutil.rmtree(src / "ILSVRC2012_devkit_t12")
    assert prep("imagenet", "--src", src, "--out", out, "--workers", "1") == 0
    m = load_manifest(out)
    assert m.splits["val"].found == 6 and m.classes[1].name == m.classes[1].id  # no names without a devkit


def test_imagenet_flat_val_without_labels_is_a_clear_error(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    synth_imagenet(src, classes=2, per_class=2, val_per_class=1)
    shutil.rmtree(src / "ILSVRC2012_devkit_t12")
    assert prep("imagenet", "--src", src, "--out", tmp_path / "out") == 2
    assert "ILSVRC2012_validation_ground_truth.txt" in capsys.readouterr().err


def test_folder_source_with_train_val(tmp_path: Path) -> None:
    src, out = tmp_path / "tree", tmp_path / "out"
    synth_imagenet(tmp_path / "inet", classes=3, per_class=3)
    shutil.copytree(tmp_path / "inet" / "train", src / "train")
    shutil.copytree(tmp_path / "inet" / "train", src / "val")
    (src / "train" / ".DS_Store").write_text("hidden files are not inputs")
    assert prep("folder", "--src", src, "--out", out, "--workers", "2", "--num-shards", "2") == 0
    m = load_manifest(out)
    assert m.dataset == "folder" and set(m.splits) == {"train", "val"}
    assert m.splits["train"].found == m.splits["val"].found == 3 * 3 + 6
    assert m.splits["train"].rejected == 3 and len(m.splits["train"].shards) == 2


def _raw_cifar_training_images(batches: Path, kind: str) -> np.ndarray:
    """The training images of the batches the test wrote, in file order (N x 32 x 32 x 3 uint8, HWC): read with
    plain pickle, apart from data_prep's reader."""
    files = sorted(batches.glob("data_batch_*")) if kind == "cifar10" else [batches / "train"]
    data = np.concatenate([pickle.loads(f.read_bytes())[b"data"] for f in files])
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes


def _shard_images(split) -> list[np.ndarray]:
    """The decoded images of one split's shards (CIFAR's are lossless PNG)."""
    import io
    import tarfile

    from PIL import Image

    images = []
    for shard in split.shards:
        with tarfile.open(shard.tar) as tar:
            images += [np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                       for member in tar if member.name.endswith(".png")]
    return images


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_splits_and_exact_stats(tmp_path: Path, kind: str) -> None:
    d = synth_cifar(tmp_path / "raw", kind, per_class=20)
    out = tmp_path / "out"
    assert prep(kind, "--src", d.parent, "--out", out, "--val-size", "50", "--workers", "1") == 0
    m = load_manifest(out)
    assert m.image_ext == "png" and set(m.splits) == {"train", "val", "test"}
    assert m.splits["train"].num_samples == 200 - 50 and m.splits["val"].num_samples == 50
    assert m.splits["test"].num_samples == 40 and m.num_classes == (10 if kind == "cifar10" else 100)

    # The statistics are those of the training split alone: the raw training images less the 50 that --val-size
    # carved out (found by their pixels among the val shards' images, one raw image each).
    raw = _raw_cifar_training_images(d, kind)
    held_out = Counter(image.tobytes() for image in _shard_images(m.splits["val"]))
    train = []
    for image in raw:
        if held_out[image.tobytes()] > 0:
            held_out[image.tobytes()] -= 1
        else:
            train.append(image)
    assert len(raw) == 200 and not +held_out, "a val image that is not one of the raw training images"
    pixels = np.stack(train).astype(np.float64)
    assert m.stats.num_images == len(pixels) == 150
    mean_image = np.load(m.stats.mean_image)
    assert mean_image.shape == (32, 32, 3) and mean_image.dtype == np.float32
    np.testing.assert_allclose(mean_image, pixels.mean(0), rtol=1e-6)  # per pixel and channel
    np.testing.assert_allclose(m.stats.mean, pixels.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(m.stats.std, pixels.std((0, 1, 2)), rtol=1e-6)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path, capsys) -> None:
    d = synth_cifar(tmp_path / "raw", "cifar10", per_class=2)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UnsafePickleError, match=r"data_batch_3.*(posix|os)\.system"):
        load_pickle(d / "data_batch_3")
    assert prep("cifar10", "--src", d, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "data_batch_3" in err and "refused" in err
    assert not marker.exists()


def test_restricted_unpickler_accepts_real_cifar_globals(tmp_path: Path) -> None:
    arr = np.arange(3072, dtype=np.uint8).reshape(1, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": arr, b"labels": [1]}, protocol=4))
    assert (load_pickle(path)[b"data"] == arr).all()
    # Files written with numpy < 2 (the real batches) name numpy.core.multiarray.
    import io

    from data_prep.safe_pickle import RestrictedUnpickler

    u = RestrictedUnpickler(io.BytesIO(b""), "x")
    assert u.find_class("numpy.core.multiarray", "_reconstruct") is np._core.multiarray._reconstruct
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        u.find_class("builtins", "eval")


def test_synth_long_side_sets_the_image_size(tmp_path: Path) -> None:
    """`data_prep synth --long-side` (the loader benchmark asks for ImageNet-sized photos)."""
    from PIL import Image

    from data_prep.__main__ import main

    assert main(["synth", "--kind", "imagenet", "--out", str(tmp_path / "src"), "--classes", "2",
                 "--per-class", "4", "--long-side", "400", "501"]) == 0
    sides = [max(Image.open(p).size) for p in (tmp_path / "src" / "train").rglob("*_[1-4].JPEG")]
    assert len(sides) == 8 and all(400 <= s <= 500 for s in sides), sides

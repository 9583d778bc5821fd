"""Real-format fixtures from photos and digits that scikit-image / scikit-learn ship (no downloads).

`synth_imagenet` writes an ILSVRC-2012 tree - official layout (a) or Kaggle layout (b) - from varied crops of
real photos, with every real-data quirk planted (CMYK JPEG, PNG named .JPEG, greyscale JPEG, truncated
JPEG, zero-byte file, text named .JPEG) and listed in `synth_quirks.json`. `synth_cifar` writes CIFAR-10/100
python batches from the scikit-learn digits (8x8, upsampled to 32x32 and coloured): a small real task.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# The first ILSVRC-2012 classes in sorted WordNet-id order, with their devkit names.
WNIDS = [
    ("n01440764", "tench, Tinca tinca"), ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"),
    ("n01491361", "tiger shark, Galeocerdo cuvieri"), ("n01494475", "hammerhead, hammerhead shark"),
    ("n01496331", "electric ray, crampfish, numbfish, torpedo"), ("n01498041", "stingray"),
    ("n01514668", "cock"), ("n01514859", "hen"), ("n01518878", "ostrich, Struthio camelus"),
    ("n01530575", "brambling, Fringilla montifringilla"), ("n01531178", "goldfinch, Carduelis carduelis"),
    ("n01532829", "house finch, linnet, Carpodacus mexicanus"), ("n01534433", "junco, snowbird"),
    ("n01537544", "indigo bunting, indigo finch, indigo bird, Passerina cyanea"),
    ("n01558993", "robin, American robin, Turdus migratorius"), ("n01560419", "bulbul"),
    ("n01580077", "jay"), ("n01582220", "magpie"), ("n01592084", "chickadee"),
]
_COLOUR_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry",
                  "hubble_deep_field", "colorwheel", "retina"]


def _wnids(n: int) -> list[tuple]:
    extra = [(f"n{99000000 + i:08d}", f"synthetic class {i}") for i in range(len(WNIDS), n)]
    return (WNIDS + extra)[:n]


def _photos() -> list[np.ndarray]:
    import skimage.data as data  # scikit-image (a test extra): only for fixtures
    from sklearn.datasets import load_sample_images

    photos = [getattr(data, name)() for name in _COLOUR_PHOTOS if hasattr(data, name)]
    photos += list(load_sample_images().images)
    return [p[..., :3].astype(np.uint8) for p in photos if p.ndim == 3]


def _variant(photo: np.ndarray, rng: np.random.Generator, long_side: tuple) -> object:
    """A random crop (40-100% of each side), maybe flipped, resized to a random long side."""

    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(photo[y:y + ch, x:x + cw])
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    side = int(rng.integers(*long_side))
    scale = side / max(img.size)
    return img.resize((max(8, round(img.size[0] * scale)), max(8, round(img.size[1] * scale))), Image.BILINEAR)


def _jpeg(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _quirks(img) -> dict[str, bytes]:
    """The bytes of each planted quirk, made from a real photo."""
    png = io.BytesIO()
    img.save(png, format="PNG")
    good = _jpeg(img)
    return {"cmyk": _jpeg(img.convert("CMYK")), "png": png.getvalue(), "grey": _jpeg(img.convert("L")),
            "truncated": good[: len(good) * 6 // 10], "empty": b"",
            "text": b"<html><body>404 Not Found</body></html>\n"}


CONVERTED_QUIRKS = ("cmyk", "png", "grey")
REJECTED_QUIRKS = ("truncated", "empty", "text")


def synth_imagenet(out: str | Path, classes: int = 4, per_class: int = 6, val_per_class: int = 2,
                   kaggle: bool = False, seed: int = 0, long_side: tuple = (160, 400)) -> dict:
    """Write an ILSVRC-2012-format tree into `out`; return (and save) the list of planted quirks."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    photos = _photos()
    syn = _wnids(classes)
    base = out / "ILSVRC" / "Data" / "CLS-LOC" if kaggle else out
    quirks: dict[str, list[dict]] = {"converted": [], "rejected": []}

    def plant(path: Path, kind: str, data: bytes) -> None:
        path.write_bytes(data)
        group = "converted" if kind in CONVERTED_QUIRKS else "rejected"
        quirks[group].append({"path": str(path.relative_to(out)), "quirk": kind})

    for c, (wnid, _) in enumerate(syn):
        folder = base / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = _variant(photos[(c * 3 + k) % len(photos)], rng, long_side)
            (folder / f"{wnid}_{k + 1}.JPEG").write_bytes(_jpeg(img, int(rng.integers(75, 96))))
    # Every quirk once in train (spread over the classes), named like ordinary images.
    for q, kind in enumerate(CONVERTED_QUIRKS + REJECTED_QUIRKS):
        wnid = syn[q % classes][0]
        img = _variant(photos[q % len(photos)], rng, long_side)
        plant(base / "train" / wnid / f"{wnid}_{per_class + 1 + q}.JPEG", kind, _quirks(img)[kind])
    # Flat val: labels through the devkit ground truth (ILSVRC2012_IDs) or Kaggle's solution CSV.
    val = base / "val"
    val.mkdir(parents=True, exist_ok=True)
    labels = [c for c in range(classes) for _ in range(val_per_class)]
    labels = [labels[i] for i in rng.permutation(len(labels))] + [0, 1 % classes]  # + 2 quirks
    for n, c in enumerate(labels, start=1):
        path = val / f"ILSVRC2012_val_{n:08d}.JPEG"
        img = _variant(photos[(c * 5 + n) % len(photos)], rng, long_side)
        if n == len(labels) - 1:
            plant(path, "truncated", _quirks(img)["truncated"])
        elif n == len(labels):
            plant(path, "cmyk", _quirks(img)["cmyk"])
        else:
            path.write_bytes(_jpeg(img))
    # The devkit's ILSVRC2012_IDs are not in WordNet-id order; reversing them makes the mapping matter.
    ids = {c: classes - c for c in range(classes)}
    if kaggle:
        (out / "LOC_synset_mapping.txt").write_text("".join(f"{w} {name}\n" for w, name in syn))
        with open(out / "LOC_val_solution.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageId", "PredictionString"])
            for n, c in enumerate(labels, start=1):
                w.writerow([f"ILSVRC2012_val_{n:08d}", f"{syn[c][0]} 10 20 110 120 {syn[c][0]} 5 5 50 60"])
        (base / "test").mkdir(exist_ok=True)
    else:
        data = out / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[c]}\n" for c in labels))
        _write_meta(data / "meta.mat", syn, ids, per_class)
    (out / "synth_quirks.json").write_text(json.dumps(quirks, indent=1))
    return quirks


def _write_meta(path: Path, syn: list[tuple], ids: dict[int, int], per_class: int) -> None:
    """meta.mat with the devkit's `synsets` struct array: the leaves plus two inner WordNet nodes."""
    import scipy.io  # scipy: only for the ILSVRC devkit's .mat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(ids[c], w, name, f"gloss of {name}", 0, np.zeros((0,), np.float64), 0, per_class)
            for c, (w, name) in sorted(enumerate(syn), key=lambda t: ids[t[0]])]
    n = len(syn)
    rows += [(n + 1, "n01503061", "bird", "warm-blooded egg-laying vertebrates", 2, np.array([1.0, 2.0]), 1, 0),
             (n + 2, "n00015388", "animal, animate being", "a living organism", 1, np.array([n + 1.0]), 2, 0)]
    arr = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, r in enumerate(rows):
        arr[i, 0] = r
    scipy.io.savemat(str(path), {"synsets": arr})


def _digit_images(seed: int) -> tuple:
    """(N x 32 x 32 x 3 uint8 images, digit labels, hue buckets 0-9): digits coloured on a dark background."""
    from sklearn.datasets import load_digits  # scikit-learn (a test extra): only for fixtures

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    images, buckets = [], []
    for i in order:
        g = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        a = np.asarray(g, np.float32)[..., None] / 255
        bucket = int(rng.integers(0, 10))
        fg = np.array(colorsys.hsv_to_rgb((bucket + rng.uniform(0.1, 0.9)) / 10, 0.8, 1.0)) * 255
        bg = rng.uniform(0, 60, 3)
        images.append((bg * (1 - a) + fg * a).round().clip(0, 255).astype(np.uint8))
        buckets.append(bucket)
    return np.stack(images), digits.target[order].astype(np.int64), np.array(buckets)


def _cap(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    keep, seen = [], {}
    for i, c in enumerate(labels):
        if seen.get(int(c), 0) < per_class:
            keep.append(i)
            seen[int(c)] = seen.get(int(c), 0) + 1
    return np.array(keep, dtype=np.int64)


def _dump(path: Path, obj: dict) -> None:
    # Protocol 4: bytes stay bytes (protocol 2 from Python 3 would need _codecs.encode, absent in real files).
    path.write_bytes(pickle.dumps(obj, protocol=4))


def synth_cifar(out: str | Path, kind: str = "cifar10", per_class: int | None = None, seed: int = 0,
                train_size: int = 1500) -> Path:
    """Write `cifar-10-batches-py/` or `cifar-100-python/` under `out`; return that directory."""
    images, digit, bucket = _digit_images(seed)
    parts = {"train": np.arange(train_size), "test": np.arange(train_size, len(digit))}
    if per_class is not None:
        test_cap = max(1, -(-per_class // 5))
        parts = {s: rows[_cap(digit[rows], per_class if s == "train" else test_cap)] for s, rows in parts.items()}
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    def rows_to_batch(rows: np.ndarray, label: str, extra: dict) -> dict:
        data = images[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072)  # R, G, B planes per row
        return {b"batch_label": label.encode(), b"data": np.ascontiguousarray(data),
                b"filenames": [f"{names[digit[r]]}_{r:05d}.png".encode() for r in rows], **extra}

    if kind == "cifar10":
        d = Path(out) / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        chunks = np.array_split(parts["train"], 5)
        for i, rows in enumerate(chunks, start=1):
            _dump(d / f"data_batch_{i}", rows_to_batch(rows, f"training batch {i} of 5",
                                                        {b"labels": digit[rows].tolist()}))
        _dump(d / "test_batch", rows_to_batch(parts["test"], "testing batch 1 of 1",
                                              {b"labels": digit[parts["test"]].tolist()}))
        _dump(d / "batches.meta", {b"num_cases_per_batch": len(chunks[0]),
                                   b"label_names": [n.encode() for n in names], b"num_vis": 3072})
        return d
    if kind != "cifar100":
        raise ValueError(f"unknown CIFAR kind {kind!r}")
    d = Path(out) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    # 100 fine classes = digit x colour bucket; 20 coarse = digit x warm/cool half of the hue circle.
    for split, label in (("train", "training batch 1 of 1"), ("test", "testing batch 1 of 1")):
        rows = parts[split]
        _dump(d / split, rows_to_batch(rows, label, {b"fine_labels": (digit[rows] * 10 + bucket[rows]).tolist(),
                                                     b"coarse_labels": (digit[rows] * 2 + bucket[rows] // 5).tolist()}))
    _dump(d / "meta", {b"fine_label_names": [f"{n}_hue{b}".encode() for n in names for b in range(10)],
                       b"coarse_label_names": [f"{n}_{h}".encode() for n in names for h in ("warm", "cool")]})
    return d

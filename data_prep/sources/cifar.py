"""`cifar10` / `cifar100` sources: the python-pickle batches, read through the restricted unpickler.

CIFAR-100 is sharded with its 100 fine labels, or with `labels="coarse"` its 20 superclasses.
Splits: train and test; with `val_size` > 0 a fixed-seed random `val_size` images of the training set
become a val split (the paper's 45k/5k protocol). Pixel statistics (per-channel mean/std and the
per-pixel mean image the paper subtracts) are exact over the final train split.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..safe_pickle import load_pickle
from ..shards import Item
from ..stats import exact_stats
from . import SourceData

_LAYOUT = {
    "cifar10": {"dir": "cifar-10-batches-py", "meta": "batches.meta", "test": ["test_batch"],
                "labels": {"fine": (b"label_names", b"labels")}},
    # CIFAR-100 has two label sets: 100 fine classes and the 20 superclasses ("coarse") they group into.
    "cifar100": {"dir": "cifar-100-python", "meta": "meta", "test": ["test"],
                 "labels": {"fine": (b"fine_label_names", b"fine_labels"),
                            "coarse": (b"coarse_label_names", b"coarse_labels")}},
}


def _batch_dir(src: Path, kind: str) -> Path:
    for cand in (src, src / _LAYOUT[kind]["dir"]):
        if (cand / _LAYOUT[kind]["meta"]).is_file():
            return cand
    raise FileNotFoundError(f"{src}: no {_LAYOUT[kind]['meta']} here nor in {_LAYOUT[kind]['dir']}/ "
                            f"- not a {kind} python-batches directory")


def _train_files(d: Path, kind: str) -> list[Path]:
    if kind == "cifar100":
        return [d / "train"]
    files = sorted(d.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    if not files:
        raise FileNotFoundError(f"{d}: no data_batch_* files")
    return files


def _read_batch(path: Path, labels_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N x 32 x 32 x 3 uint8 HWC images, N labels) of one batch file, validated."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR batch")
    batch = load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or labels_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (needs keys b'data' and {labels_key!r})")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[labels_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: b'data' should be uint8 N x 3072 with N labels; got {data.dtype} {data.shape}, "
                         f"{len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
    # Rows are R, G, B planes of 32x32, row-major: to HWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _items(images: np.ndarray, labels: np.ndarray, origins: list[str], rows: np.ndarray) -> list[Item]:
    return [Item(int(labels[i]), None, 3072, np.ascontiguousarray(images[i]).tobytes(), origins[i]) for i in rows]


def load_cifar(src: Path, kind: str, val_size: int = 0, seed: int = 0, labels: str = "fine") -> SourceData:
    """List a CIFAR-10/100 batches directory (`kind` = cifar10 | cifar100; CIFAR-100 `labels` fine | coarse)."""
    if kind not in _LAYOUT:
        raise ValueError(f"unknown CIFAR kind {kind!r}")
    layout = _LAYOUT[kind]
    if labels not in layout["labels"]:
        raise ValueError(f"{kind} has no {labels!r} labels (it has: {', '.join(layout['labels'])})")
    names_key, labels_key = layout["labels"][labels]
    d = _batch_dir(Path(src), kind)
    meta = load_pickle(d / layout["meta"])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if not names:
        raise ValueError(f"{d / layout['meta']}: no {names_key!r} list")
    classes = [{"index": i, "id": n, "name": n} for i, n in enumerate(names)]

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        parts = [(_read_batch(f, labels_key, len(names)), f.name) for f in files]
        origins = [f"{name}[{r}]" for (imgs, _), name in parts for r in range(len(imgs))]
        return (np.concatenate([p[0][0] for p in parts]), np.concatenate([p[0][1] for p in parts]), origins)

    train_x, train_y, train_o = read(_train_files(d, kind))
    test_x, test_y, test_o = read([d / f for f in layout["test"]])
    rows = np.arange(len(train_x))
    splits: dict[str, list[Item]] = {}
    if val_size:
        if not 0 < val_size < len(train_x):
            raise ValueError(f"--val-size {val_size} must be between 1 and {len(train_x) - 1}")
        perm = np.random.default_rng(seed).permutation(len(train_x))
        val_rows, rows = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    splits["train"] = _items(train_x, train_y, train_o, rows)
    if val_size:
        splits["val"] = _items(train_x, train_y, train_o, val_rows)
    splits["test"] = _items(test_x, test_y, test_o, np.arange(len(test_x)))
    notes = [f"{labels} labels: {len(classes)} classes"] if kind == "cifar100" else []
    return SourceData(kind, "png", classes, splits, exact_stats=exact_stats(train_x[rows]), notes=notes)

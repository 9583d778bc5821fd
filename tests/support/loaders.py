"""Tiny prepared datasets for the loader tests, written to the shard contract (manifest v1).

Used until/unless `data_prep synth` is available: `make_dataset` follows the contract exactly - tar
members `<key>.<ext>` + `<key>.cls`, DALI `wds2idx` index files, manifest with counts, bytes, sha256.
Images are crops of scikit-image's real photos, so JPEG decoding takes the real code paths.
Each image's key encodes its global id and its size, so tests can check coverage and geometry.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


HAS_DALI = _has_dali()
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")
BACKENDS = [pytest.param("dali", marks=needs_dali), "torch"]  # the loader backends that read shards


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def make_dataset(out: Path, kind: str, splits: dict[str, Sequence[int]], num_classes: int = 3,
                 seed: int = 0, sizes: tuple[int, int] = (60, 160)) -> Path:
    """Write `out/` with, per split, shards of the given sample counts. kind: imagenet (jpg) | cifar (png 32x32).

    ImageNet-kind images have sides drawn from `sizes` (photos are upscaled where they are smaller)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = _photos()
    ext = "jpg" if kind == "imagenet" else "png"
    manifest_splits = {}
    gid = 0
    for split, counts in splits.items():
        shards = []
        for si, count in enumerate(counts):
            tar_name, idx_name = f"{split}-{si:06d}.tar", f"{split}-{si:06d}.idx"
            with tarfile.open(out / tar_name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for _ in range(count):
                    photo = photos[gid % len(photos)]
                    if kind == "imagenet":
                        h, w = int(rng.integers(*sizes)), int(rng.integers(*sizes))
                        grow = max(h / photo.shape[0], w / photo.shape[1])
                        if grow >= 1:
                            size = (int(photo.shape[1] * grow) + 2, int(photo.shape[0] * grow) + 2)
                            photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
                    else:
                        h = w = 32
                    y, x = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
                    crop = photo[y:y + h, x:x + w]
                    if crop.ndim == 2:
                        crop = np.stack([crop] * 3, -1)
                    buf = io.BytesIO()
                    Image.fromarray(crop[..., :3]).save(buf, format="JPEG" if ext == "jpg" else "PNG", quality=90)
                    key = f"s{gid:06d}_{h}x{w}"
                    _add(tar, f"{key}.{ext}", buf.getvalue())
                    _add(tar, f"{key}.cls", str(gid % num_classes).encode())
                    gid += 1
            write_index(out / tar_name, out / idx_name)
            data = (out / tar_name).read_bytes()
            shards.append({"tar": tar_name, "index": idx_name, "num_samples": count, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        manifest_splits[split] = {"num_samples": sum(counts), "found": sum(counts), "rejected": 0, "shards": shards}
    mean_image = None
    if kind == "cifar":
        np.save(out / "mean_image.npy", np.full((32, 32, 3), 120.0, dtype=np.float32))
        mean_image = "mean_image.npy"
    # Every field data_prep writes (its reader, which the loaders use, checks them), with made-up statistics.
    manifest = {"format": "resnet-repro-shards", "version": 1, "dataset": f"test-{kind}", "image_ext": ext,
                "label_ext": "cls", "num_classes": num_classes,
                "classes": [{"index": i, "id": f"c{i}", "name": f"class {i}"} for i in range(num_classes)],
                "encoding": {"reencoded": False, "max_side": None, "quality": None}, "splits": manifest_splits,
                "stats": {"split": "train", "mean": [120.0, 115.0, 100.0], "std": [60.0, 58.0, 59.0],
                          "mean_image": mean_image, "num_images": 0},
                "seed": 0, "created_by": "tests/support/loaders.py"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def stored_images(root: Path, split: str, ext: str) -> list[Image.Image]:
    """The split's `.<ext>` images straight from its tars, in shard order, decoded by PIL as RGB."""
    images = []
    for tar_path in sorted(Path(root).glob(f"{split}-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(f".{ext}"):
                    images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    return images


def write_index(tar_path: Path, idx_path: Path) -> None:
    """DALI's `wds2idx` when DALI is installed; otherwise the same "v1.2" format written here."""
    try:
        from wds2idx import IndexCreator
    except ImportError:
        samples: dict[str, list[str]] = {}
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, []).append(f"{ext} {m.offset_data} {m.size} {m.name}")
        idx_path.write_text(f"v1.2 {len(samples)}\n" + "".join(" ".join(v) + "\n" for v in samples.values()))
        return
    with IndexCreator(str(tar_path), str(idx_path), verbose=False) as ic:
        ic.create_index()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))

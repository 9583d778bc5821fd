"""Merge the per-shard completion records of all tasks into `manifest.json`, `rejected.jsonl` (files not
written, with the reason), `converted.jsonl` (files written after a fix) and `warnings.jsonl` (findings of
the listing that are no file's fault, e.g. an empty class folder).

Run automatically by the task that finishes last (and idempotent, so two tasks finishing together
write the same bytes), or explicitly with `python -m data_prep merge DIR` after a SLURM array. For file
sources (ImageNet, folder) it also writes `mean_image.npy`, the 224x224 mean of the centre views of
the statistics sample, read back from the train shards (stats.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .durable import fsync_dir, write_file
from .index import parse_index, split_name
from .manifest import FORMAT, MANIFEST_NAME, VERSION, ManifestError
from .shards import PARTS_DIR
from .stats import PixelSums, mean_of_center_views

MEAN_IMAGE_NAME = "mean_image.npy"

WARNINGS_NAME = "warnings.jsonl"


def _plan(out: Path) -> dict:
    path = out / PARTS_DIR / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no plan - run `python -m data_prep <source> --out {out}` first")
    return json.loads(path.read_text())


def missing_records(out: str | Path) -> list[str]:
    """Names of planned shards that have no completion record yet."""
    out = Path(out)
    plan = _plan(out)
    return [name for s in plan["splits"].values() for name in s["shards"]
            if not (out / PARTS_DIR / f"{name}.json").is_file()]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


def _stats_sample(out: Path, train: dict | None, image_ext: str, every: int) -> Iterator[bytes]:
    """The encoded train images of the statistics sample (keys `train_<p>` with p % every == 0), in key
    order - the images whose pixels fed the per-channel sums, read back from the written shards."""
    found = []
    for shard in (train or {}).get("shards", []):
        for members in parse_index(out / shard["index"]):
            for ext, offset, size, name in members:
                position = int(split_name(name)[0].rsplit("_", 1)[1])
                if ext == image_ext and position % every == 0:
                    found.append((position, shard["tar"], offset, size))
    for _, tar, offset, size in sorted(found):
        with open(out / tar, "rb") as f:
            f.seek(offset)
            yield f.read(size)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def merge(out: str | Path) -> Path:
    """Write `out/manifest.json` (+ rejected.jsonl, converted.jsonl, warnings.jsonl) from the plan and all
    shard records."""
    out = Path(out)
    refuse_unknown_manifest(out)
    plan = _plan(out)
    missing = missing_records(out)
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} shard(s) not written yet, e.g. {missing[:3]} "
                           f"- run the remaining tasks first")
    splits, rejected, converted, sums = {}, [], [], PixelSums()
    for split, info in plan["splits"].items():
        shards = []
        written = bad = 0
        for name in info["shards"]:
            rec = json.loads((out / PARTS_DIR / f"{name}.json").read_text())
            rejected += rec["rejected"]
            converted += rec["converted"]
            written += rec["num_samples"]
            bad += len(rec["rejected"])
            if split == "train":
                sums.merge(PixelSums.from_dict(rec["stats"]))
            if rec["num_samples"]:  # a shard whose every input was rejected has no file
                shards.append({k: rec[k] for k in ("tar", "index", "num_samples", "bytes", "sha256")})
        if written + bad != info["found"]:  # the invariant: written + rejected = found
            raise RuntimeError(f"{out}: split {split}: {written} written + {bad} rejected != {info['found']} found")
        splits[split] = {"num_samples": written, "found": info["found"], "rejected": bad, "shards": shards}
    stats = dict(plan["stats"])
    every = stats.pop("every", 0)  # absent from plans of data_prep before the ImageNet mean image
    if not stats.pop("exact"):
        mean, std = sums.mean_std()
        sample = _stats_sample(out, splits.get("train"), plan["image_ext"], every) if every else None
        image, _ = mean_of_center_views(sample) if every else (None, 0)
        if image is not None:
            write_file(out / MEAN_IMAGE_NAME, _npy(image))
        stats.update(mean=mean, std=std, mean_image=MEAN_IMAGE_NAME if image is not None else None)
        stats["num_images"] = sums.images
    else:
        stats["num_images"] = splits.get("train", {}).get("num_samples", 0)
    manifest = {"format": FORMAT, "version": VERSION, "dataset": plan["dataset"], "image_ext": plan["image_ext"],
                "label_ext": "cls", "classes": plan["classes"], "num_classes": len(plan["classes"]),
                "encoding": plan["encoding"], "splits": splits, "stats": stats, "seed": plan["seed"],
                "created_by": plan["created_by"]}
    write_file(out / "rejected.jsonl", _jsonl(rejected))
    write_file(out / "converted.jsonl", _jsonl(converted))
    write_file(out / WARNINGS_NAME, _jsonl(plan.get("warnings", [])))
    path = out / MANIFEST_NAME
    fsync_dir(out)  # every shard's rename is on disk before the manifest names it
    write_file(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return path


def refuse_unknown_manifest(out: Path) -> None:
    """ManifestError if `out` holds a manifest of a format or version this data_prep does not write: merging
    would replace it with this version's, losing what a newer data_prep recorded there."""
    path = Path(out) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        return  # unreadable or half written: a merge writes it whole
    if isinstance(raw, dict) and (raw.get("format"), raw.get("version")) != (FORMAT, VERSION):
        raise ManifestError(f"{path}: format {raw.get('format')!r} version {raw.get('version')!r} was not written by "
                            f"this data_prep (it writes {FORMAT!r} version {VERSION}); refusing to replace it - "
                            "use the data_prep that wrote it, or another --out")

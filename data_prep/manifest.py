"""The manifest of a prepared dataset (format "resnet-repro-shards", version 1) as typed dataclasses.

`load_manifest(path_or_dir)` is the one reader of a manifest: data_prep's own commands use it, and so do the
training loaders (`pipeline.data.dataset`) and `launch`'s checks. It rejects unknown formats and versions and
malformed fields naming the file, and resolves shard paths relative to the dataset directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "resnet-repro-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ClassInfo:
    index: int
    id: str  # WordNet id for ImageNet, the folder or label name otherwise
    name: str


@dataclass(frozen=True)
class ShardInfo:
    tar: Path  # absolute (resolved against the dataset directory)
    index: Path
    num_samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    found: int
    rejected: int
    shards: tuple[ShardInfo, ...]


@dataclass(frozen=True)
class EncodingInfo:
    reencoded: bool
    max_side: int | None
    quality: int | None


@dataclass(frozen=True)
class Stats:
    split: str
    mean: tuple[float, float, float]  # per channel RGB, 0-255 scale
    std: tuple[float, float, float]
    # float32 HxWx3 .npy (0-255): CIFAR's exact 32x32 per-pixel mean; ImageNet/folder: the 224x224 mean of
    # the centre views (shorter side 256) of the statistics sample. None: made by an older data_prep.
    mean_image: Path | None
    num_images: int  # how many images the statistics were computed from


@dataclass(frozen=True)
class Manifest:
    path: Path
    root: Path
    dataset: str
    image_ext: str
    label_ext: str
    classes: tuple[ClassInfo, ...]
    num_classes: int
    encoding: EncodingInfo
    splits: dict[str, SplitInfo]
    stats: Stats
    seed: int
    created_by: str

    def split(self, name: str) -> SplitInfo:
        """The split `name`, or ManifestError listing the splits there are."""
        if name not in self.splits:
            raise ManifestError(f"{self.path}: no split {name!r} (has: {', '.join(self.splits)})")
        return self.splits[name]


def load_manifest(path_or_dir: str | Path) -> Manifest:
    """Read and validate `manifest.json` (or the one inside a dataset directory)."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is this a directory written by `python -m data_prep`?)") from None
    except ValueError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {raw.get('format')!r} is not {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {raw.get('version')!r} is not supported (knows {VERSION})")
    root = path.parent.resolve()
    try:
        splits = {
            name: SplitInfo(name, int(s["num_samples"]), int(s["found"]), int(s["rejected"]), tuple(
                ShardInfo(root / sh["tar"], root / sh["index"], int(sh["num_samples"]), int(sh["bytes"]),
                          str(sh["sha256"])) for sh in s["shards"]))
            for name, s in raw["splits"].items()}
        st = raw["stats"]
        stats = Stats(st["split"], tuple(st["mean"]), tuple(st["std"]),  # type: ignore[arg-type]
                      root / st["mean_image"] if st.get("mean_image") else None, int(st.get("num_images", 0)))
        enc = raw["encoding"]
        return Manifest(path, root, raw["dataset"], raw["image_ext"], raw["label_ext"],
                        tuple(ClassInfo(int(c["index"]), str(c["id"]), str(c["name"])) for c in raw["classes"]),
                        int(raw["num_classes"]), EncodingInfo(bool(enc["reencoded"]), enc["max_side"], enc["quality"]),
                        splits, stats, int(raw["seed"]), str(raw["created_by"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: malformed manifest ({e.__class__.__name__}: {e})") from e

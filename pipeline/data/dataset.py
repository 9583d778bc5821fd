"""A prepared dataset as the loaders see it: the manifest, its shards and their DALI index files.

The directory layout and manifest fields are `data_prep`'s contract (see docs / DESIGN.md):
`manifest.json`, `<split>-NNNNNN.tar`, `<split>-NNNNNN.idx` (DALI `wds2idx` format, "v1.2"),
optional `mean_image.npy`. Opening a split checks what can be checked cheaply - manifest version,
every shard present with its recorded byte size, every index parseable and consistent with its tar
and sample count - so a broken dataset stops at start-up with a message naming the file, never
as a hang or a silent short epoch on one rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.index import IndexError_, parse_index
from data_prep.manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest
from pipeline.dist import exit_codes


class DatasetError(RuntimeError):
    """A prepared dataset that cannot be read; the message names the file."""

    exit_code = exit_codes.DATA


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's two members lie inside its tar: (offset, size) of the image and the label."""

    shard: int
    image: tuple[int, int]
    label: tuple[int, int]


@dataclass(frozen=True)
class Shard:
    tar: Path
    index: Path
    num_samples: int


@dataclass(frozen=True)
class Split:
    """One split of a prepared dataset, validated."""

    root: Path
    name: str
    image_ext: str
    label_ext: str
    num_classes: int
    shards: tuple[Shard, ...]
    mean: tuple[float, float, float]  # per channel, 0-255
    std: tuple[float, float, float]
    mean_image_path: Path | None

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def mean_image(self) -> np.ndarray | None:
        """The per-pixel mean (float32 HxWx3, 0-255), or None when the dataset has none."""
        if self.mean_image_path is None:
            return None
        try:
            image = np.load(self.mean_image_path).astype(np.float32)
        except Exception as e:
            raise DatasetError(f"{self.mean_image_path}: cannot read the mean image: {e}") from e
        if image.ndim != 3 or image.shape[2] != 3:
            raise DatasetError(f"{self.mean_image_path}: the mean image has shape {image.shape}, not H x W x 3")
        return image

    def read_sample(self, ref: SampleRef) -> tuple[bytes, int]:
        """One sample's encoded image and its label, read straight from its tar (the loaders' own reads are
        theirs; this serves a few images, e.g. an export's check)."""
        tar = self.shards[ref.shard].tar
        members = []
        with open(tar, "rb") as f:
            for offset, size in (ref.image, ref.label):
                f.seek(offset)
                members.append(f.read(size))
        if [len(m) for m in members] != [ref.image[1], ref.label[1]]:
            raise DatasetError(f"{tar}: truncated (a sample at byte {ref.image[0]} is cut short)")
        try:
            return members[0], int(members[1].decode("ascii").strip())
        except ValueError:
            raise DatasetError(f"{tar}: the sample at byte {ref.image[0]} has label {members[1][:20]!r}, not an "
                               "integer") from None

    def sample_refs(self) -> list[SampleRef]:
        """Every sample of the split, in manifest (shard, then tar) order, from the index files."""
        refs: list[SampleRef] = []
        for i, shard in enumerate(self.shards):
            for members in read_index(shard.index):
                try:
                    refs.append(SampleRef(i, members[self.image_ext][:2], members[self.label_ext][:2]))
                except KeyError as e:
                    raise DatasetError(f"{shard.index}: a sample lacks its .{e.args[0]} member") from e
        return refs


def sample_table(refs: list[SampleRef]) -> np.ndarray:
    """The samples as one int64 row each, (shard, image offset, size, label offset, size): compact to keep, share
    between processes and send to other ranks."""
    return np.array([(r.shard, *r.image, *r.label) for r in refs], dtype=np.int64).reshape(-1, 5)


def read_manifest(root: str | Path) -> Manifest:
    """The manifest of the dataset directory `root`, read by data_prep's one reader (format and version checked)."""
    try:
        return load_manifest(Path(root) / MANIFEST_NAME)
    except ManifestError as e:
        raise DatasetError(str(e)) from None


def open_split(root: str | Path, split: str) -> Split:
    """Validate and describe one split of the dataset at `root` (cheap: sizes and indexes, no checksums)."""
    root = Path(root)
    manifest = read_manifest(root)
    if split not in manifest.splits:
        raise DatasetError(f"{manifest.path}: no split {split!r} (it has {', '.join(sorted(manifest.splits))})")
    info = manifest.splits[split]
    shards = []
    for entry in info.shards:
        shard = Shard(entry.tar, entry.index, entry.num_samples)
        _check_shard(shard, entry.bytes)
        shards.append(shard)
    total = sum(s.num_samples for s in shards)
    if total != info.num_samples:
        raise DatasetError(f"{manifest.path}: split {split!r} says {info.num_samples} samples but its shards hold "
                           f"{total}")
    stats = manifest.stats
    return Split(root=root, name=split, image_ext=manifest.image_ext, label_ext=manifest.label_ext,
                 num_classes=manifest.num_classes, shards=tuple(shards), mean=stats.mean, std=stats.std,
                 mean_image_path=stats.mean_image)


def read_index(path: Path) -> list[dict[str, tuple[int, int, str]]]:
    """Parse a DALI webdataset index (data_prep's parser): per sample, {extension: (offset, size, member name)}."""
    try:
        samples = parse_index(path)
    except IndexError_ as e:
        raise DatasetError(str(e)) from None
    return [{ext: (offset, size, name) for ext, offset, size, name in members} for members in samples]


def _check_shard(shard: Shard, expected_bytes: int | None) -> None:
    if not shard.tar.is_file():
        raise DatasetError(f"{shard.tar}: shard missing")
    if not shard.index.is_file():
        raise DatasetError(f"{shard.index}: index file missing (make it with DALI's wds2idx)")
    size = shard.tar.stat().st_size
    if expected_bytes is not None and size != int(expected_bytes):
        raise DatasetError(f"{shard.tar}: {size} bytes, the manifest says {expected_bytes} (truncated or replaced?)")
    samples = read_index(shard.index)
    if len(samples) != shard.num_samples:
        raise DatasetError(f"{shard.index}: indexes {len(samples)} samples, the manifest says {shard.num_samples} "
                           f"for {shard.tar.name}")
    end = max((o + s for members in samples for o, s, _ in members.values()), default=0)
    if end > size:
        raise DatasetError(f"{shard.index}: points past the end of {shard.tar} ({end} > {size} bytes): "
                           f"the index does not match its tar")
    # Spot-check the first and last sample: the tar header just before each member names that member.
    with open(shard.tar, "rb") as f:
        for members in samples[:1] + samples[-1:]:
            for offset, _, name in members.values():
                f.seek(offset - 512)
                header_name = f.read(100).split(b"\0", 1)[0].decode("utf-8", "replace")
                if offset < 512 or not name.endswith(header_name):
                    raise DatasetError(f"{shard.index}: entry {name!r} does not match {shard.tar} at byte {offset} "
                                       f"(found {header_name!r}): the index does not match its tar")

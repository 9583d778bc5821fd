"""Re-read every shard of a prepared dataset: size, sha256, sample count, index consistency, decodability."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .index import IndexError_, index_from_tar, parse_index
from .manifest import Manifest, ShardInfo, load_manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_samples(shard: ShardInfo, m: Manifest) -> str | None:
    """Every sample has exactly an image and a label; images decode; labels are class indexes."""

    with tarfile.open(shard.tar, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("." + m.label_ext):
                text = data.decode("ascii", "replace")
                if not text.isdigit() or not 0 <= int(text) < m.num_classes:
                    return f"{member.name}: label {text!r} is not a class index 0..{m.num_classes - 1}"
            elif member.name.endswith("." + m.image_ext):
                try:
                    img = Image.open(io.BytesIO(data))
                    img.draft("RGB", (64, 64))  # JPEG: decode all data at reduced scale (cheap, still complete)
                    img.load()
                except Exception as e:
                    return f"{member.name}: image does not decode: {e}"
            else:
                return f"{member.name}: unexpected member (not .{m.image_ext} or .{m.label_ext})"
    return None


def verify_shard(shard: ShardInfo, m: Manifest, decode: bool = True) -> str | None:
    """The first problem found with one shard, or None."""
    if not shard.tar.is_file():
        return "missing tar"
    size = shard.tar.stat().st_size
    if size != shard.bytes:
        return f"size {size} bytes, manifest says {shard.bytes} (truncated or replaced?)"
    if _sha256(shard.tar) != shard.sha256:
        return "sha256 does not match the manifest (corrupted)"
    try:
        idx = parse_index(shard.index)
    except IndexError_ as e:
        return str(e)
    try:
        actual = index_from_tar(shard.tar)
    except (tarfile.TarError, OSError, EOFError) as e:
        return f"unreadable tar: {e}"
    if len(actual) != shard.num_samples:
        return f"holds {len(actual)} samples, manifest says {shard.num_samples}"
    if idx != actual:
        return f"index {shard.index.name} does not match the tar's members"
    for members in actual:
        if sorted(e for e, *_ in members) != sorted([m.image_ext, m.label_ext]):
            names = [x[3] for x in members]
            return f"sample {members[0][3]}: members {names}, expected .{m.image_ext} + .{m.label_ext}"
    return _check_samples(shard, m) if decode else None


def verify(root: str | Path, decode: bool = True, log: Callable[[str], None] = print) -> list[str]:
    """Check every shard of the dataset at `root`; return 'SHARD: problem' lines (empty when all good)."""
    m = load_manifest(root)
    problems = []
    for split in m.splits.values():
        for shard in split.shards:
            problem = verify_shard(shard, m, decode)
            if problem:
                problems.append(f"{shard.tar}: {problem}")
                log(f"BAD {shard.tar.name}: {problem}")
        total = sum(s.num_samples for s in split.shards)
        if total != split.num_samples or split.num_samples + split.rejected != split.found:
            problems.append(f"{m.path}: split {split.name} counts inconsistent ({total} in shards, "
                            f"{split.num_samples} written, {split.rejected} rejected, {split.found} found)")
    return problems

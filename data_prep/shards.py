"""Write one WebDataset shard: a deterministic tar, its DALI index and a completion record.

A shard is written to `<name>.tmp` and renamed when complete, then its record (`_parts/<split>-NNNNNN.json`:
counts, bytes, sha256, rejected files, pixel sums, and a fingerprint of its planned inputs) is renamed into
place last - the record is the completion marker. A rerun skips a shard whose record matches its plan
and whose tar has the recorded size, so a killed run resumes where it stopped and produces the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

from .images import Encoding, Rejected, encode_png, prepare_jpeg, small_rgb
from .index import Member, format_index
from .stats import PixelSums

PARTS_DIR = "_parts"


class Item(NamedTuple):
    """One input sample: a file (`path`, its `size` in bytes) or raw 32x32x3 RGB `pixels` (CIFAR)."""

    label: int
    path: Optional[str]
    size: int
    pixels: Optional[bytes] = None
    origin: str = ""  # where `pixels` came from, for messages (e.g. "data_batch_1[17]")
    problem: str = ""  # set by a source that already knows the item is unusable (e.g. no label)


@dataclass
class ShardTask:
    """Everything a worker needs to write one shard (picklable)."""

    out_dir: str
    split: str
    number: int
    keys: List[str]
    items: List[Item]
    image_ext: str  # "jpg" or "png"
    encoding: Encoding
    stats_positions: List[int]  # positions in this shard whose pixels feed the statistics
    fingerprint: str
    fsync: bool = True

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:06d}"


def fingerprint(items: List[Item], keys: List[str], image_ext: str, encoding: Encoding) -> str:
    """A digest of a shard's planned inputs and settings: a rerun reuses a shard only if this matches."""
    h = hashlib.sha256(json.dumps([image_ext, encoding.max_side, encoding.quality]).encode())
    for key, it in zip(keys, items):
        h.update(f"{key}\0{it.label}\0{it.path}\0{it.size}\0{it.problem}\0".encode())
        if it.pixels is not None:
            h.update(it.pixels)
    return h.hexdigest()


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it (one pass over the bytes)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.count = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.f.write(b)
        self.count += len(b)
        return len(b)

    def tell(self) -> int:
        return self.count


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the tar's bytes depend only on names and contents.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def record_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / PARTS_DIR / f"{name}.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name and a rename (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def completed_record(task: ShardTask) -> Optional[Dict]:
    """The record of an already complete, matching shard, or None when it must be (re)written."""
    path = record_path(task.out_dir, task.name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != task.fingerprint:
        return None
    if record["num_samples"] == 0:
        return record
    tar = Path(task.out_dir) / record["tar"]
    idx = Path(task.out_dir) / record["index"]
    if not idx.is_file() or not tar.is_file() or tar.stat().st_size != record["bytes"]:
        return None
    return record


READ_AHEAD_THREADS = 8


def _read(item: Item):
    """The file's bytes, or the OSError (raised later, in order, by _encode)."""
    if item.pixels is not None or item.problem:
        return None
    try:
        with open(item.path, "rb") as f:  # type: ignore[arg-type]
            return f.read()
    except OSError as e:
        return e


def _read_ahead(pool, items: List[Item], window: int = 64):
    """Yield _read(item) for each item in order, with at most `window` reads in flight (bounded memory)."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(_read, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _encode(task: ShardTask, item: Item, data) -> tuple:
    """(image bytes, fix or None, input size) for one item; raises Rejected or OSError."""
    if item.pixels is not None:
        return encode_png(item.pixels), None, len(item.pixels)
    if isinstance(data, OSError):
        raise data
    out, fix = prepare_jpeg(data, task.encoding)
    return out, fix, len(data)


def write_shard(task: ShardTask, progress: Optional[Callable[[int, int], None]] = None) -> Dict:
    """Write (or reuse) the shard described by `task`; return its record. `progress(images, bytes)`."""
    done = completed_record(task)
    if done is not None:
        if progress:
            progress(len(task.items), sum(it.size for it in task.items))
        return done
    out = Path(task.out_dir)
    tar_path, idx_path = out / f"{task.name}.tar", out / f"{task.name}.idx"
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    rejected: List[Dict] = []
    converted: List[Dict] = []
    sums = PixelSums()
    index: List[List[Member]] = []
    stats_at = set(task.stats_positions)
    pending_images = pending_bytes = 0
    # Reads run ahead in threads (file I/O releases the GIL): storage latency overlaps the CPU work,
    # and the results still come back in plan order, so the output is unchanged.
    from concurrent.futures import ThreadPoolExecutor

    with open(tmp, "wb", buffering=1 << 20) as raw, ThreadPoolExecutor(READ_AHEAD_THREADS) as pool:
        hashed = _HashingFile(raw)
        contents = _read_ahead(pool, task.items)
        with tarfile.open(fileobj=hashed, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for pos, (key, item, content) in enumerate(zip(task.keys, task.items, contents)):
                where = item.path or item.origin
                try:
                    if item.problem:
                        raise Rejected(item.problem)
                    data, fix, read = _encode(task, item, content)
                except Rejected as e:
                    rejected.append({"split": task.split, "path": where, "reason": e.reason})
                    read = item.size
                    data = None
                except OSError as e:  # unreadable file (permissions, I/O error): rejected, named, not fatal
                    rejected.append({"split": task.split, "path": where, "reason": f"cannot read: {e}"})
                    read, data = 0, None
                if data is not None:
                    if fix:
                        converted.append({"split": task.split, "path": where, "key": key, "fix": fix})
                    members = []
                    for ext, payload in ((task.image_ext, data), ("cls", str(item.label).encode())):
                        name = f"{key}.{ext}"
                        # USTAR with a short name: exactly one 512-byte header before the data.
                        members.append((ext, tar.offset + tarfile.BLOCKSIZE, len(payload), name))
                        tar.addfile(_tarinfo(name, len(payload)), io.BytesIO(payload))
                    index.append(members)
                    if pos in stats_at:
                        sums.add(small_rgb(data))
                pending_images, pending_bytes = pending_images + 1, pending_bytes + read
                if progress and pending_images >= 32:
                    progress(pending_images, pending_bytes)
                    pending_images = pending_bytes = 0
        raw.flush()
        if task.fsync:
            os.fsync(raw.fileno())
    if progress and pending_images:
        progress(pending_images, pending_bytes)
    record = {"split": task.split, "shard": task.number, "tar": tar_path.name, "index": idx_path.name,
              "num_samples": len(index), "bytes": hashed.count, "sha256": hashed.sha.hexdigest(),
              "fingerprint": task.fingerprint, "rejected": rejected, "converted": converted,
              "stats": sums.to_dict()}
    if index:
        atomic_write(idx_path, format_index(index).encode())
        os.replace(tmp, tar_path)
    else:  # every input of this shard was rejected: no (unreadable, empty) shard file at all
        tmp.unlink()
        for p in (tar_path, idx_path):
            p.unlink(missing_ok=True)
    atomic_write(record_path(out, task.name), json.dumps(record, indent=1).encode())
    return record

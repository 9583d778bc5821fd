"""Write one WebDataset shard: a deterministic tar, its DALI index and a completion record.

A shard is written to `<name>.tmp` and renamed when complete, then its record (`_parts/<split>-NNNNNN.json`:
counts, bytes, sha256, rejected files, pixel sums, and a fingerprint of its planned inputs) is renamed into
place last - the record is the completion marker. A rerun skips a shard whose record matches its plan
and whose tar has the recorded size, so a killed run resumes where it stopped and produces the same bytes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .durable import write_file
from .images import Encoding, Rejected, encode_png, prepare_jpeg, small_rgb
from .index import Member, format_index
from .stats import PixelSums

PARTS_DIR = "_parts"


class Item(NamedTuple):
    """One input sample: a file (`path`, its `size` in bytes) or raw 32x32x3 RGB `pixels` (CIFAR)."""

    label: int
    path: str | None
    size: int
    pixels: bytes | None = None
    origin: str = ""  # where `pixels` came from, for messages (e.g. "data_batch_1[17]")
    problem: str = ""  # set by a source that already knows the item is unusable (e.g. no label)


@dataclass
class ShardTask:
    """Everything a worker needs to write one shard (picklable)."""

    out_dir: str
    split: str
    number: int
    keys: list[str]
    items: list[Item]
    image_ext: str  # "jpg" or "png"
    encoding: Encoding
    stats_positions: list[int]  # positions in this shard whose pixels feed the statistics
    fingerprint: str
    fsync: bool = True

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:06d}"


def fingerprint(items: list[Item], keys: list[str], image_ext: str, encoding: Encoding) -> str:
    """A digest of a shard's planned inputs and settings: a rerun reuses a shard only if this matches."""
    h = hashlib.sha256(json.dumps([image_ext, encoding.max_side, encoding.quality, encoding.max_pixels]).encode())
    for key, it in zip(keys, items):
        # surrogateescape: a file name that is not valid UTF-8 (os.fsdecode gives it lone surrogates) is
        # hashed as its original bytes instead of stopping the whole run.
        h.update(f"{key}\0{it.label}\0{it.path}\0{it.size}\0{it.problem}\0".encode("utf-8", "surrogateescape"))
        if it.pixels is not None:
            h.update(it.pixels)
    return h.hexdigest()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the tar's bytes depend only on names and contents.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


# The USTAR header tarfile writes for _tarinfo(name, size), built by hand (tarfile's costs ~40 us a member):
# name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] type[1] linkname[100] magic+version[8]
# uname[32] gname[32] devmajor[8] devminor[8] prefix[155] pad[12]. Everything but name, size and chksum is
# constant. Checked byte for byte against tarfile's output (names, sizes) when this was written.
_HDR_MID = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
_HDR_MTIME = b"00000000000\x00"
_HDR_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
_HDR_CONST_SUM = sum(_HDR_MID) + sum(_HDR_MTIME) + sum(b" " * 8) + sum(_HDR_TAIL)
_MAX_USTAR_SIZE = 8 ** 11 - 1


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular member `name` of `size` bytes, byte-identical to tarfile's."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or size > _MAX_USTAR_SIZE or size < 0 or b"\x00" in raw:
        # Long names (prefix split), huge sizes, odd names: let tarfile decide (or refuse).
        return _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\x00" % size
    chksum = _HDR_CONST_SUM + sum(raw) + sum(size_field)
    return b"".join((raw, bytes(100 - len(raw)), _HDR_MID, size_field, _HDR_MTIME,
                     b"%06o\x00 " % chksum, _HDR_TAIL))


def record_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / PARTS_DIR / f"{name}.json"


def completed_record(task: ShardTask) -> dict | None:
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


BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE  # 512, 10240
_ZEROS = bytes(BLOCK)
OUT_CHUNK = 1 << 20
READ_AHEAD_FILES = 128  # files opened (and their reads started) ahead of the one being written ...
READ_AHEAD_BYTES = 16 << 20  # ... and at most about this many bytes of them


def _open_ahead(item: Item):
    """An open descriptor for the item's file, its read already started; None (no file) or the OSError."""
    if item.pixels is not None or item.problem:
        return None
    try:
        fd = os.open(item.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # type: ignore[arg-type]
    except OSError as e:
        return e
    try:
        # Asynchronous readahead of the whole file: storage latency overlaps the work on earlier files.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (AttributeError, OSError):
        pass
    return fd


def _read_fd(fd: int, size: int, path: str | None):
    """All of the file's bytes (`size` is the listed size, a hint), or the OSError; closes `fd`."""
    try:
        want = size + 1
        data = os.read(fd, want)
        if len(data) != size:  # grew since it was listed, or shrank, or a short read: read to EOF
            parts = [data]
            while True:
                more = os.read(fd, max(want, 1 << 20))
                if not more:
                    break
                parts.append(more)
            data = b"".join(parts)
        return data
    except OSError as e:  # os.read's errors lack the file name that open()'s carry: add it
        return e if e.filename is not None else type(e)(e.errno, e.strerror, path)
    finally:
        os.close(fd)


def _contents(items: list[Item], window: int = READ_AHEAD_FILES, window_bytes: int = READ_AHEAD_BYTES):
    """Yield each item's bytes (None for pixels or known problems, or the OSError, raised later, in order).

    Up to `window` files (and about `window_bytes`) are open with their readahead requested ahead of the
    one being read - bounded memory and descriptors; the reads themselves happen in order in this thread,
    so there is no thread or future per file."""

    pending: deque = deque()
    n = len(items)
    ahead = ahead_bytes = 0
    try:
        for i in range(n):
            while ahead < n and (ahead <= i or (ahead < i + window and ahead_bytes < window_bytes)):
                pending.append(_open_ahead(items[ahead]))
                ahead_bytes += items[ahead].size
                ahead += 1
            got = pending.popleft()
            ahead_bytes -= items[i].size
            yield _read_fd(got, items[i].size, items[i].path) if isinstance(got, int) else got
    finally:  # an abandoned generator closes what it opened
        for got in pending:
            if isinstance(got, int):
                os.close(got)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing these bytes back to storage now, without waiting (Linux: POSIX_FADV_DONTNEED begins
    writeback of dirty pages and leaves them cached), so the final fsync overlaps the work on later files
    instead of waiting for the whole shard."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


def _encode(task: ShardTask, item: Item, data) -> tuple:
    """(image bytes, fix or None, input size) for one item; raises Rejected or OSError."""
    if item.pixels is not None:
        return encode_png(item.pixels), None, len(item.pixels)
    if isinstance(data, OSError):
        raise data
    out, fix = prepare_jpeg(data, task.encoding)
    return out, fix, len(data)


def write_shard(task: ShardTask, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write (or reuse) the shard described by `task`; return its record. `progress(images, bytes)`."""
    done = completed_record(task)
    if done is not None:
        if progress:
            progress(len(task.items), sum(it.size for it in task.items))
        return done
    out = Path(task.out_dir)
    tar_path, idx_path = out / f"{task.name}.tar", out / f"{task.name}.idx"
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    # This task holds the shard's lock: a temporary file of its index or record is a killed writer's leftover.
    for stale in [*out.glob(f"{glob.escape(idx_path.name)}.*.tmp"),
                  *record_path(out, task.name).parent.glob(f"{glob.escape(task.name)}.json.*.tmp")]:
        stale.unlink(missing_ok=True)
    rejected: list[dict] = []
    converted: list[dict] = []
    sums = PixelSums()
    index: list[list[Member]] = []
    stats_at = set(task.stats_positions)
    pending_images = pending_bytes = 0
    # Output goes through one bytearray: a member's header, data and padding are appended, and every
    # OUT_CHUNK bytes the chunk is hashed and written - a few large calls instead of several per file.
    sha = hashlib.sha256()
    buf = bytearray()
    written = 0  # bytes already hashed and written; the tar offset is written + len(buf)
    early_writeback = task.fsync
    with open(tmp, "wb") as raw:  # writes of at least the (8 KB) buffer go straight through
        for pos, (key, item, content) in enumerate(zip(task.keys, task.items, _contents(task.items))):
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
                    buf += tar_header(name, len(payload))
                    # USTAR with a short name: exactly one 512-byte header before the data.
                    members.append((ext, written + len(buf), len(payload), name))
                    buf += payload
                    buf += _ZEROS[:-len(payload) % BLOCK]
                index.append(members)
                if pos in stats_at:
                    sums.add(small_rgb(data))
                if len(buf) >= OUT_CHUNK:
                    sha.update(buf)
                    raw.write(buf)  # more than the file's buffer: goes straight to the descriptor
                    if early_writeback:
                        _start_writeback(raw.fileno(), written, len(buf))
                    written += len(buf)
                    buf.clear()
            pending_images, pending_bytes = pending_images + 1, pending_bytes + read
            if progress and pending_images >= 32:
                progress(pending_images, pending_bytes)
                pending_images = pending_bytes = 0
        # End of archive as tarfile writes it: two zero blocks, then zeros up to a whole record.
        buf += bytes(2 * BLOCK)
        buf += bytes(-(written + len(buf)) % RECORD)
        sha.update(buf)
        raw.write(buf)
        written += len(buf)
        raw.flush()
        if task.fsync:
            os.fsync(raw.fileno())
    if progress and pending_images:
        progress(pending_images, pending_bytes)
    record = {"split": task.split, "shard": task.number, "tar": tar_path.name, "index": idx_path.name,
              "num_samples": len(index), "bytes": written, "sha256": sha.hexdigest(),
              "fingerprint": task.fingerprint, "rejected": rejected, "converted": converted,
              "stats": sums.to_dict()}
    if index:
        os.replace(tmp, tar_path)
        # The index's write flushes the directory too, so both names are on disk before the record says so.
        write_file(idx_path, format_index(index).encode(), fsync=task.fsync)
    else:  # every input of this shard was rejected: no (unreadable, empty) shard file at all
        tmp.unlink()
        for p in (tar_path, idx_path):
            p.unlink(missing_ok=True)
    write_file(record_path(out, task.name), json.dumps(record, indent=1).encode(), fsync=task.fsync)
    return record

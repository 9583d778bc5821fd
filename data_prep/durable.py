"""Files that are whole once they are named: written under a temporary name, flushed to disk, renamed.

One implementation for everything that must survive a crash of the node, not only of the process:
data_prep's shards, index files and manifest, training's checkpoints, launch's profiles. A rename is
atomic for readers, but after a power loss or a kernel crash the new name can point at a file whose
data never reached the disk unless the file was fsynced before the rename and the directory after it.

    record = write_file(path, data)            # -> FileRecord(bytes, sha256): what a checker compares later
    fsync_dir(path.parent)                     # after renaming files into a directory (write_file does its own)
    record = digest(path)                      # size and sha256 of a file written by somebody else
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 8 << 20  # read and hash in 8 MiB pieces: large reads, bounded memory

Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True)
class FileRecord:
    """What a file should be: its size and its sha256 (hex)."""

    bytes: int
    sha256: str

    def as_list(self) -> list:
        return [self.bytes, self.sha256]


def write_file(path: Path, data: Bytes, fsync: bool = True) -> FileRecord:
    """Write `data` to `path` through a temporary name and a rename; with `fsync`, on disk before it is named.

    The temporary name is this process's own (`<name>.<pid>.tmp`): the tasks of a job array, or the ranks of a
    job, may write the same name at the same moment, and a shared temporary name let one rename the other's
    file away. Returns the size and sha256 of what was written."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    view = memoryview(data).cast("B")
    try:
        with open(tmp, "wb") as f:
            f.write(view)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return FileRecord(len(view), hashlib.sha256(view).hexdigest())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest(path: Path, fsync: bool = False) -> FileRecord:
    """Size and sha256 of the file at `path` (read back); with `fsync`, its data is also flushed to disk."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return FileRecord(size, sha.hexdigest())


def check_file(path: Path, expected: FileRecord) -> str:
    """Why the file at `path` is not what `expected` describes ("" when it is)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as e:
        return f"{path}: cannot read ({e.strerror or e})"
    if size != expected.bytes:
        return f"{path}: {size} bytes, {expected.bytes} were written"
    try:
        found = digest(path)
    except OSError as e:
        return f"{path}: cannot read ({e.strerror or e})"
    if found.sha256 != expected.sha256:
        return f"{path}: its sha256 is not that of the file written (the data was changed or damaged)"
    return ""

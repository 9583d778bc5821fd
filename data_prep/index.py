"""DALI webdataset index files (the format of DALI's bundled `wds2idx` tool, "v1.2").

Line 1: `v1.2 <num_samples>`; then one line per sample, its members in tar order, each as
`<ext> <data offset> <size> <member name>` joined by spaces. The writer computes the entries while it
writes the tar (no second pass); `index_from_tar` rebuilds them from a tar for verification.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path

INDEX_VERSION = "v1.2"

Member = tuple[str, int, int, str]  # (extension, data offset, size, member name)


class IndexError_(ValueError):
    """An index file that cannot be parsed; the message names the file."""


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, splitting at the first dot of the basename, as wds2idx does."""
    dot = name.find(".", name.rfind("/") + 1)
    return name[:dot], name[dot + 1:]


def format_index(samples: Sequence[Sequence[Member]]) -> str:
    """The text of an index file for `samples` (each a list of its members in tar order)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in members) for members in samples]
    return "\n".join(lines) + "\n"


def parse_index(path: str | Path) -> list[list[Member]]:
    """Read an index file: per sample, its members. Raises IndexError_ naming the file."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise IndexError_(f"{path}: cannot read index: {e}") from e
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise IndexError_(f"{path}: first line should be '{INDEX_VERSION} <count>'")
    samples: list[list[Member]] = []
    for n, line in enumerate(lines[1:], start=2):
        f = line.split()
        if not f or len(f) % 4:
            raise IndexError_(f"{path}:{n}: malformed line {line!r}")
        try:
            samples.append([(f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3]) for i in range(0, len(f), 4)])
        except ValueError:
            raise IndexError_(f"{path}:{n}: malformed line {line!r}") from None
    if len(samples) != int(head[1]):
        raise IndexError_(f"{path}: header says {head[1]} samples, found {len(samples)} lines")
    return samples


def index_from_tar(path: str | Path) -> list[list[Member]]:
    """Group a tar's regular members into samples by key (consecutive runs), as wds2idx does."""
    samples: list[list[Member]] = []
    last = None
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isreg():
                continue
            key, ext = split_name(m.name)
            if not key or key.endswith("/"):
                continue
            if key != last:
                samples.append([])
                last = key
            samples[-1].append((ext, m.offset_data, m.size, m.name))
    return samples

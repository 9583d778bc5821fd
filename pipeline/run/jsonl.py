"""JSON Lines read back: a torn last line is cut off, a bad line before it is damage.

An append that a node crash or a full disk stops leaves part of a line at the end of the file (or, after a
crash, a tail of NUL bytes); a reader that also runs while the file is appended (`launch status`, a report of a
live run) can see the same. Only the last line can be torn that way: every earlier line was whole before the
next one was appended. So the last line that is not JSON is left out (and returned, for whoever rewrites the file
to say so), while a bad line before it raises `JsonlDamaged` naming the file and the line: that is damage a
person has to look at, not an append cut short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class JsonlDamaged(ValueError):
    """A line before the last of a JSON Lines file is not a JSON object; the message names the file and line."""


@dataclass
class JsonlRead:
    records: list[dict] = field(default_factory=list)
    torn: bytes = b""  # the last line, when it was not whole (what an interrupted append left)
    ends_whole: bool = True  # the file ends with a newline (or is empty): the next append starts a line

    @property
    def needs_rewrite(self) -> bool:
        """The file must be rewritten before anything is appended: else the next record joins a broken line."""
        return bool(self.torn) or not self.ends_whole


def read_jsonl(path: Path) -> JsonlRead:
    """Every record of `path` (a missing file has none), blank lines skipped, a torn last line left out."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return JsonlRead()
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    read = JsonlRead(ends_whole=not data or data.endswith(b"\n"))
    for number, line in enumerate(lines[:last + 1], start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is not None:
            read.records.append(record)
        elif number - 1 == last:
            read.torn = line
        else:
            raise JsonlDamaged(f"{path}: line {number} is not a JSON record ({_excerpt(line)}), and it is not the "
                               "last line, so it is damage rather than an append cut short: repair or delete it")
    return read


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes cut inside a character
        return None
    return record if isinstance(record, dict) else None


def _excerpt(line: bytes, limit: int = 60) -> str:
    text = line.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")

"""Read W&B's offline run files (`wandb/offline-run-*/run-<id>.wandb`) without uploading them.

Tests use it to check what a run sent to W&B (one run id across restarts, steps that only go forward),
and the report can read runs that were never synced. The file is a LevelDB-style log of W&B's protobuf
`Record`s: a 7-byte header, then 32 KiB blocks of records (4-byte checksum, 2-byte length, 1-byte
type), a record split over blocks as FIRST/MIDDLE/LAST pieces.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_FILE_HEADER = 7
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    path: Path
    run_id: str = ""
    history: list[dict] = field(default_factory=list)  # one dict per wandb.log call, with "_step"
    config: dict = field(default_factory=dict)
    group: str = ""
    tags: list[str] = field(default_factory=list)
    job_type: str = ""
    artifacts: list[OfflineArtifact] = field(default_factory=list)  # in the order logged


@dataclass
class OfflineArtifact:
    name: str
    type: str
    aliases: list[str]
    metadata: dict
    files: dict[str, str]  # each file's name in the artifact -> the local file W&B uploads it from


def read_offline_run(path: Path | str) -> OfflineRun:
    """The run id, logged history and artifacts of one `.wandb` file."""
    from wandb.proto import wandb_internal_pb2 as pb  # the protobuf schema ships with wandb

    path = Path(path)
    run = OfflineRun(path)
    for payload in _records(path.read_bytes(), path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            run.group, run.tags, run.job_type = record.run.run_group, list(record.run.tags), record.run.job_type
            _update_config(run.config, record.run.config)
        elif kind == "config":
            _update_config(run.config, record.config)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            if record.history.HasField("step"):
                row.setdefault("_step", record.history.step.num)
            run.history.append(row)
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append(OfflineArtifact(a.name, a.type, list(a.aliases), json.loads(a.metadata or "{}"),
                                                 {entry.path: entry.local_path for entry in a.manifest.contents}))
    return run


def _update_config(config: dict, record) -> None:
    for item in record.update:
        key = item.key or "/".join(item.nested_key)
        if not key.startswith("_"):  # W&B's own bookkeeping
            config[key] = json.loads(item.value_json)


def offline_runs(run_dir: Path | str) -> list[OfflineRun]:
    """Every offline W&B run file under a run directory, oldest first."""
    # By time written: a resumed run's directory name ("...-<id>-1") does not sort after the first's.
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"), key=lambda f: f.stat().st_mtime)
    return [read_offline_run(f) for f in files]


def _records(data: bytes, path: Path) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (bad header)")
    offset, pieces = _FILE_HEADER, []
    while offset + _RECORD_HEADER <= len(data):
        left_in_block = _BLOCK - offset % _BLOCK
        if left_in_block < _RECORD_HEADER:  # block trailer: zero padding
            offset += left_in_block
            continue
        length, kind = struct.unpack_from("<HB", data, offset + 4)
        if kind == 0 and length == 0:  # preallocated, never written
            break
        start = offset + _RECORD_HEADER
        pieces.append(data[start:start + length])
        offset = start + length
        if kind in (_FULL, _LAST):
            yield b"".join(pieces)
            pieces = []

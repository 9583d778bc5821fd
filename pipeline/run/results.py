"""A run's `results.json` and `layer_responses.json`: what training and evaluation leave for the report.

    results.json = {
      "train": {step, epoch, split, protocol: "center", samples, top1_error, top5_error},   # end of training
      "eval": {"tencrop": {checkpoint, step, split, protocol, samples, top1_error, top5_error}, ...},
    }

Training writes "train"; `python -m pipeline.evaluate` adds one entry per protocol under "eval". Several
evaluation jobs may finish at once, so every update is a locked read-modify-write and an atomic rename.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.run.layout import RunDir


def read_results(run_dir: Path) -> dict[str, Any]:
    path = RunDir(run_dir).results
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def update_results(run_dir: Path, key: str, value: dict[str, Any], protocol: str | None = None) -> None:
    """Set `results[key]` (or `results[key][protocol]`), keeping everything else in the file."""
    path = RunDir(run_dir).results
    with _locked(path):
        results = read_results(run_dir)
        if protocol is None:
            results[key] = value
        else:
            results.setdefault(key, {})[protocol] = value
        _write_json(path, results)


def protocol_result(results: dict[str, Any], protocol: str) -> dict[str, Any] | None:
    """The evaluation of `protocol`, if the run has one (training's final evaluation is the centre view)."""
    found = results.get("eval", {}).get(protocol)
    if found is None and results.get("train", {}).get("protocol") == protocol:
        found = results["train"]
    return found


def write_layer_responses(run_dir: Path, responses: dict[str, Any]) -> None:
    _write_json(RunDir(run_dir).layer_responses, responses)


def read_layer_responses(run_dir: Path) -> dict[str, Any] | None:
    path = RunDir(run_dir).layer_responses
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

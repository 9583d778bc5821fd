"""Helpers for the data_prep tests: synth fixtures and runs of the real CLI (in-process or as a subprocess)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

ROOT = REPO


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m data_prep ARGS` in a subprocess (the real entry point)."""
    proc = subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"data_prep {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def prep(*args: str) -> int:
    """`data_prep ARGS` in-process (faster than a subprocess), with the progress bar off."""
    from data_prep.__main__ import main

    return main([*map(str, args), "--no-progress", "--no-fsync"])


def shard_digests(out: Path) -> dict[str, str]:
    """sha256 of every tar/idx/manifest file in a prepared dataset directory."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.suffix in (".tar", ".idx", ".json", ".jsonl", ".npy")}


def rel_paths(rows: list[dict], src: Path) -> list[str]:
    return sorted(str(Path(r["path"]).relative_to(src)) for r in rows)

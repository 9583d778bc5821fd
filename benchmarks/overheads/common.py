"""What the sections of `benchmarks/scale_overheads.py` share: this checkout, its data, the machine, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo" / "digits.yaml"
IMAGENET_CONFIGS = {"ResNet-50": REPO / "configs" / "imagenet" / "resnet50.yaml",
                    "ResNet-152": REPO / "configs" / "imagenet" / "resnet152.yaml"}
ENGINES = ("ddp", "deepspeed")
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
Lines = list[str]


def load_tolerant(config: Path, overrides: Sequence[str]) -> tuple[object, list[str]]:
    """`load_config(config, overrides)`, dropping any override whose key the schema no longer knows (returned,
    to be reported): a renamed key then costs that setting, not the whole measurement."""
    from pipeline.config import ConfigError, load_config

    overrides, dropped = list(overrides), []
    while True:
        try:
            return load_config(config, overrides), dropped
        except ConfigError as e:
            named = [o for o in overrides if f"'{o.split('=', 1)[0]}'" in str(e)]
            if not named:
                raise
            overrides.remove(named[0])
            dropped.append(named[0])


def digits(work: Path) -> Path:
    """The digits in CIFAR-10's format, sharded by data_prep (as tests/conftest.py makes them); made once."""
    shards = work / "digits"
    if not (shards / "manifest.json").exists():
        for cmd in (["synth", "--kind", "cifar10", "--out", str(work / "raw")],
                    ["cifar10", "--src", str(work / "raw" / "cifar-10-batches-py"), "--out", str(shards),
                     "--no-progress"]):
            subprocess.run([sys.executable, "-m", "data_prep", *cmd], check=True, cwd=REPO, env=child_env(),
                           capture_output=True)
    return shards


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def machine() -> str:
    try:
        from train_throughput import machine as described  # benchmarks/ is this script's directory

        text = described()
    except Exception:  # noqa: BLE001 - the description must not stop the measurements
        import platform

        text = f"{os.cpu_count()} cores ({platform.processor() or 'unknown CPU'}), Python {platform.python_version()}"
    try:
        from importlib.metadata import version

        text += f", deepspeed {version('deepspeed')}"
    except Exception:  # noqa: BLE001
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{text}; load average at the start {load}"


def code_description() -> str:
    """The commit measured and where `pipeline` was imported from (a worktree must measure its own code)."""
    import pipeline

    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "pipeline", "launch",
                                "data_prep", "configs"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    changes = " with uncommitted changes in pipeline/, launch/, data_prep/ or configs/" if dirty else ""
    return f"commit {commit}{changes}; `pipeline` from {Path(pipeline.__file__).parent}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> Lines:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")



def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Throughput profiles: what `launch bench` writes and `launch plan` reads (one reader for both sides).

A profile is a JSON file:

    {"format": "resnet-repro-throughput", "version": 1,
     "kind": "measured" | "reference",
     "created": "2025-...", "command": "python -m launch bench ...",
     "machine": {"device": "cuda", "gpu": "NVIDIA A100-SXM4-80GB", "gpu_count": 8, "cpu": "...", "cpu_count": 128,
                 "host": "..."},
     "software": {"python": "3.11.7", "torch": "2.x", "cuda": "12.4", "cudnn": 90100, "nccl": "2.21.5",
                  "deepspeed": "0.x", "dali": "1.x", "submitit": "1.x"},
     "models": {"resnet50": {"images_per_s": 14000.0,          # global, all processes together
                             "images_per_s_per_gpu": 1750.0,   # per process (= per GPU; per CPU process on CPU)
                             "world_size": 8, "precision": "bf16", "engine": "ddp", "batch_size": 256,
                             "image_size": 224, "data_backend": "dali", "steps": 50, "warmup_steps": 10,
                             "data_wait_fraction": 0.01,
                             "eval_images_per_s_per_gpu": 5200.0 | null,   # forward only, centre views
                             "startup_s": 35.2 | null,   # the run's time besides its steps and final evaluation
                             "config": "configs/imagenet/resnet50.yaml"}, ...}}

`startup_s` came later: profiles without it are read as before, and `launch plan` then counts no start-up.

A reference profile (configs/throughput/reference.json, `kind: reference`) has the same shape plus a
`source` per model, `by_precision` figures, a `macs` table (multiply-adds per image, from
`pipeline.models.complexity`) for scaling to models it does not list, and `eval_factor`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from data_prep.durable import write_file
from pipeline.config import ConfigError

FORMAT = "resnet-repro-throughput"
VERSION = 1
REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "configs" / "throughput" / "reference.json"
KINDS = ("measured", "reference")
MODEL_KEYS = ("images_per_s_per_gpu", "world_size", "precision", "batch_size")


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read and check a profile; ConfigError names the file and what is wrong."""
    path = Path(path)
    try:
        profile = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"throughput profile not found: {path} (write one with `python -m launch bench`)") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(profile, dict) or profile.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a throughput profile (format is not {FORMAT!r})")
    if profile.get("version") != VERSION:
        raise ConfigError(f"{path}: profile version {profile.get('version')!r} is not supported (this reader "
                          f"knows {VERSION})")
    if profile.get("kind") not in KINDS:
        raise ConfigError(f"{path}: kind {profile.get('kind')!r} is not one of {', '.join(KINDS)}")
    models = profile.get("models")
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: no 'models' mapping")
    for name, entry in models.items():
        missing = [k for k in MODEL_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ConfigError(f"{path}: model {name!r} lacks {', '.join(missing)}")
        if not entry["images_per_s_per_gpu"] or entry["images_per_s_per_gpu"] <= 0:
            raise ConfigError(f"{path}: model {name!r} has no positive images_per_s_per_gpu")
    profile["path"] = str(path)
    return profile


def write_profile(path: str | Path, profile: dict[str, Any]) -> Path:
    """Write atomically (temporary name, then rename): a half-written profile is never read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, "version": VERSION, **profile}, indent=1, sort_keys=False) + "\n"
    write_file(path, text.encode())
    return path


def machine_info() -> dict[str, Any]:
    """The machine this process runs on: its GPU model and count (if any), CPU model and count, host."""
    import torch  # noqa: PLC0415 - torch describes the machine; the planner reads profiles without it

    cuda = torch.cuda.is_available()
    return {
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu": cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "host": socket.gethostname(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software_versions() -> dict[str, Any]:
    """Versions of what decides the speed: Python, torch, CUDA, cuDNN, NCCL, DeepSpeed, DALI (None: absent)."""
    import torch  # noqa: PLC0415 - torch describes the machine; the planner reads profiles without it

    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                "cuda": torch.version.cuda, "cudnn": None, "nccl": None}
    if torch.backends.cudnn.is_available():
        versions["cudnn"] = torch.backends.cudnn.version()
    if torch.cuda.is_available():
        try:
            nccl = torch.cuda.nccl.version()
            versions["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except (RuntimeError, AttributeError):
            pass
    # From the installed distributions' metadata: importing DeepSpeed or DALI here would take seconds.
    versions.update(deepspeed=_distribution_version("deepspeed"), dali=_distribution_version("nvidia-dali"),
                    submitit=_distribution_version("submitit"))
    return versions


def _distribution_version(prefix: str) -> str | None:
    """The version of the installed distribution named `prefix` or `prefix-*` (DALI: nvidia-dali-cuda120)."""

    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == prefix or name.startswith(prefix + "-"):
            return dist.version
    return None

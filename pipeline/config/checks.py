"""Checks that catch a config shrunk or moved by hand (a table tried on a small cluster, a CPU, a smaller
dataset): each returns a warning to log or print, or None, or raises a ConfigError where training would fail.

Training logs the warnings at its start; `launch submit`, `sweep` and `reproduce` print those they can know
before a job runs (the schedule's).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError
from pipeline.config.schema import EngineConfig, ScheduleConfig

# Flags /proc/cpuinfo shows on CPUs that compute bf16 natively (AVX-512 BF16: Cooper Lake, Zen 4 and later;
# AMX: Sapphire Rapids and later). Elsewhere torch emulates bf16 in fp32 and casts: slower than fp32 itself.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def schedule_warning(schedule: ScheduleConfig) -> str | None:
    """Milestones at or past the end of training never lower the learning rate: almost always a shrunk
    `schedule.total` whose milestones were left at the recipe's."""
    if schedule.kind != "multistep":
        return None
    late = [m for m in schedule.milestones if m >= schedule.total]
    if not late:
        return None
    unit = f"{schedule.unit}s"
    return (f"schedule.milestones {late} are at or past schedule.total ({schedule.total} {unit}): the learning rate "
            f"never drops there. Shrink them with the total (the recipes drop at 50% and 75% of it, e.g. "
            f"schedule.milestones=[{schedule.total // 2},{schedule.total * 3 // 4}]), or schedule.milestones=[] for a "
            f"constant rate")


def precision_warning(engine: EngineConfig, device_type: str, cpu_flags: str | None = None) -> str | None:
    """bf16 on a CPU that has no bf16 arithmetic is emulated, about ten times slower than fp32 (ResNet-50: 20.2 s
    against 2.0 s a step on such a CPU). `cpu_flags`: /proc/cpuinfo's text (read when not given)."""
    if engine.precision != "bf16" or device_type != "cpu":
        return None
    if cpu_flags is None:
        try:
            cpu_flags = CPUINFO.read_text()
        except OSError:
            return None  # not Linux: nothing to tell from
    if any(flag in cpu_flags.split() for flag in NATIVE_BF16_FLAGS):
        return None
    return ("engine.precision=bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): torch "
            "emulates it, about 10x slower than fp32 (ResNet-50: 20.2 s against 2.0 s a step). On this machine use "
            "engine.precision=fp32")


def num_classes_warning(model_classes: int, dataset_classes: int, manifest: str) -> str | None:
    """The net's outputs against the dataset's classes. Fewer outputs than classes cannot train (labels past the
    last output): a ConfigError. More is a config made for a bigger dataset: it trains, but top-5 picks among
    outputs no image is labelled with."""
    if model_classes < dataset_classes:
        raise ConfigError(f"model.num_classes ({model_classes}) is below the {dataset_classes} classes of {manifest}: "
                          f"set model.num_classes={dataset_classes}")
    if model_classes > dataset_classes:
        return (f"model.num_classes ({model_classes}) is above the {dataset_classes} classes of {manifest}: "
                f"{model_classes - dataset_classes} outputs are never a label (top-5 error counts them); set "
                f"model.num_classes={dataset_classes}")
    return None

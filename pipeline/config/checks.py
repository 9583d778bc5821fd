"""Checks that catch a config shrunk or moved by hand (a table tried on a small cluster, a CPU, a smaller
dataset): each returns a warning to log or print, or None, or raises a ConfigError where training would fail.

Training logs the warnings at its start; `launch submit`, `sweep` and `reproduce` print those they can know
before a job runs (the schedule's and the warm-up's).
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


def warmup_warning(schedule: ScheduleConfig, steps_per_epoch: int | None = None) -> str | None:
    """A warm-up that can last until the first milestone (or the end) holds its small rate where the scheduled
    one should apply: the net never trains at the peak rate. Almost always a shrunk `schedule.total` with the
    recipe's warm-up (ResNet-110's cap of 2000 iterations in a 100-step try).

    The cap is not shrunk with the total on purpose: how long a net needs at the small rate depends on the net
    and the data, not on how long it trains afterwards, and a config's value must be the one it runs with. The
    suggested cap lies just before the milestone: a cap that ends the warm-up of a net still at chance gives
    the peak rate to a net that cannot take it yet. `steps_per_epoch`: to compare with milestones given in
    epochs (unknown before the data is opened: no warning then)."""
    if schedule.warmup == "none" or (schedule.unit == "epoch" and steps_per_epoch is None):
        return None
    per_unit = steps_per_epoch if schedule.unit == "epoch" else 1
    # Where the scheduled rate would first change: its first drop, or the end (milestones past it never drop).
    drops = bool(schedule.kind == "multistep" and schedule.milestones and schedule.milestones[0] < schedule.total)
    end = (schedule.milestones[0] if drops else schedule.total) * per_unit
    if schedule.warmup_iterations < end:
        return None
    where = (f"the first of schedule.milestones (step {end})" if drops else f"schedule.total (step {end})")
    if schedule.warmup == "until_train_error":
        held = (f"can outlast {where}: lr stays at schedule.warmup_lr={schedule.warmup_lr:g} until a logged "
                f"training error is below {schedule.warmup_until_error:g}%, else up to the cap, so the scheduled "
                "rate may never apply")
        sooner = " (with logging.every_steps below it, for the training error to end it sooner)"
    else:
        held = (f"outlasts {where}: lr is still warming up from schedule.warmup_lr={schedule.warmup_lr:g} there, "
                "so the scheduled rate never applies")
        sooner = ""
    return (f"schedule.warmup_iterations ({schedule.warmup_iterations}) {held} before it "
            f"{'drops' if drops else 'ends'}. Shrink the warm-up with the schedule, e.g. "
            f"schedule.warmup_iterations={max(end - max(end // 10, 1), 1)}{sooner}")


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

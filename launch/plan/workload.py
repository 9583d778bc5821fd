"""What a table's runs do, counted before they run: each split's size, training steps, the evaluations training
makes and the one a table adds after it (in centre views), and the makespan of runs on a number of job slots."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import ConfigError, ExperimentConfig
from pipeline.data.base import train_steps_per_epoch
from pipeline.data.dataset import DatasetError, read_manifest
from pipeline.models.registry import get_spec
from pipeline.tables.spec import table_evaluation
from pipeline.train.schedule import LRSchedule

PAPER_SPLITS: dict[str, tuple[str, dict[str, int]]] = {
    "imagenet": ("ImageNet", {"train": 1_281_167, "val": 50_000}),
    "cifar": ("CIFAR-10", {"train": 50_000, "test": 10_000}),
}
MULTISCALE_ASPECT = 4 / 3  # ImageNet's typical 500x375: a whole image at shorter side s has s * 4s/3 pixels


def split_sizes(cfg: ExperimentConfig) -> tuple[dict[str, int], str]:
    """Sample count of each split: from data.root's manifest, else the paper's dataset (by the net's family)."""
    try:
        manifest = read_manifest(cfg.data.root)
        return ({name: split.num_samples for name, split in manifest.splits.items()},
                f"the manifest of {cfg.data.root}")
    except DatasetError:
        dataset, sizes = PAPER_SPLITS[get_spec(cfg.model.name).family]
        sizes_text = ", ".join(f"{n:,} {split}" for split, n in sizes.items())
        return sizes, f"the paper's {dataset} ({sizes_text}; no manifest at data.root={cfg.data.root})"


def split_size(sizes: dict[str, int], split: str, source: str) -> int:
    if split not in sizes:
        raise ConfigError(f"split {split!r} has no known size: {source} gives {', '.join(sizes)}; pass "
                          "data.root=<the prepared dataset> so its manifest is read")
    return sizes[split]


def train_steps(cfg: ExperimentConfig, train_size: int) -> tuple[int, int]:
    """(total steps, steps per epoch) of the config's schedule, as the trainer counts them."""
    per_epoch = train_steps_per_epoch(train_size, cfg.data.batch_size)
    if per_epoch < 1:
        raise ConfigError(f"{cfg.run.name}: the train split ({train_size} samples) is smaller than one global "
                          f"batch ({cfg.data.batch_size})")
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch=per_epoch, global_batch=cfg.data.batch_size)
    return schedule.total_steps, per_epoch


def training_evaluations(cfg: ExperimentConfig, total_steps: int, steps_per_epoch: int) -> int:
    """How many passes over the evaluation split training makes: its periodic ones and the final one.

    As the loop runs: every `every_steps` steps (the last step included), and at the end of every
    `every_epochs`-th epoch that ends before the schedule does (the final evaluation takes that one's place).
    """
    periodic = total_steps // cfg.eval.every_steps if cfg.eval.every_steps else 0
    if cfg.eval.every_epochs:
        periodic += ((total_steps - 1) // steps_per_epoch) // cfg.eval.every_epochs
    return periodic + 1


def protocol_views(protocol: str, cfg: ExperimentConfig) -> float:
    """The cost of evaluating one image with `protocol`, in centre views of the training side."""
    if protocol == "center":
        return 1.0
    if protocol == "tencrop":
        return 10.0
    return sum((side / cfg.data.image_size) ** 2 * MULTISCALE_ASPECT for side in cfg.eval.scales)


def table_evaluation_views(kind: str, protocol: str, cfg: ExperimentConfig) -> float:
    """Views per image of the evaluation a table adds after training, as `launch reproduce` submits it: a
    table's protocol other than the centre view, or Fig. 7's layer responses (a centre pass of their own);
    0 where training's final centre evaluation is the result."""
    evaluation = table_evaluation(kind, protocol)
    return protocol_views(evaluation.protocol, cfg) if evaluation else 0.0


def makespan(durations: Sequence[float], slots: int) -> float:
    """The finishing time of jobs placed longest first, each onto the slot that frees first (LPT)."""
    if slots < 1:
        raise ConfigError(f"--array-parallelism must be at least 1, got {slots}")
    loads = [0.0] * max(1, min(slots, len(durations)))
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)



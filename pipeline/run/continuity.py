"""What a run's checkpoints fix, and a start that would change it refused before it writes anything.

A checkpoint holds one net (its layers and their shapes), one layout of optimizer state and one engine's files.
A start whose config changes any of these cannot continue the run: torch would refuse the weights with a
traceback, or DeepSpeed find files missing and call the checkpoint damaged; and the run's `config.yaml`, rewritten
by the start, would no longer describe its weights. Such a start is refused with one line that names each key
(old -> new) and asks for a new `run.name`. Every other key may change between starts: a longer schedule,
another batch size or number of ranks, another dataset path, W&B's settings.

    check_continues(RunDir.of(cfg), cfg, dataset_classes)   # ConfigError (exit 2), or the start may go on

The comparison is with the run's `config.yaml` (what the accepted starts wrote), and only where the run has a
complete checkpoint: a run that never saved one holds nothing a new config could contradict.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.checkpoint.store import CheckpointStore
from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.models.registry import IMAGENET_STAGES, get_spec
from pipeline.run.layout import RunDir


def _shortcut(cfg: ExperimentConfig) -> str:
    """The shortcut option the net is built with: "default" is the paper's option for that net."""
    try:
        spec = get_spec(cfg.model.name)
    except KeyError:  # an unknown name is refused where the net is built, naming the registered ones
        return cfg.model.shortcut
    return spec.default_shortcut if cfg.model.shortcut == "default" else cfg.model.shortcut


def _bottleneck_stride(cfg: ExperimentConfig) -> str | None:
    """Where a bottleneck block downsamples; None for nets without bottleneck blocks, which ignore the key."""
    try:
        spec = get_spec(cfg.model.name)
    except KeyError:
        return cfg.model.bottleneck_stride
    if spec.family == "imagenet" and IMAGENET_STAGES[spec.depth][0] == "bottleneck":
        return cfg.model.bottleneck_stride
    return None


# Each key that decides what a checkpoint holds, and what of its value matters; `model.num_classes` is compared
# as resolved (None: the dataset's classes). Keys not here change training, not the checkpoint's contents.
HELD_BY_CHECKPOINTS: dict[str, Callable[[ExperimentConfig], object]] = {
    "model.name": lambda cfg: cfg.model.name,  # the layers
    "model.shortcut": _shortcut,  # option A has no weights; B and C add projections
    "model.bottleneck_stride": _bottleneck_stride,  # which conv the weights were trained to downsample with
    "optim.decay_bn_and_bias": lambda cfg: cfg.optim.decay_bn_and_bias,  # one parameter group, or two
    "engine.name": lambda cfg: cfg.engine.name,  # DDP's state.pt, or DeepSpeed's own files
    # ZeRO 1 and 2 write the optimizer state in the same slices (one per rank); stage 0 whole, beside the weights.
    "engine.zero_stage": lambda cfg: cfg.engine.name == "deepspeed" and cfg.engine.zero_stage > 0,
    # fp16 keeps a loss scale (DDP's gradient scaler, DeepSpeed's fp16 optimizer); fp32 and bf16 keep none.
    "engine.precision": lambda cfg: cfg.engine.precision == "fp16",
}


def check_continues(run: RunDir, cfg: ExperimentConfig, dataset_classes: Callable[[], int] | None = None) -> None:
    """Refuse (ConfigError, one line) a start of `run` with `cfg` where it changes what the run's checkpoints hold.

    `dataset_classes` gives the dataset's class count, for a `cfg` whose `model.num_classes` is None (asked only
    then); without it such a `cfg`'s class count is not compared (the launcher, which does not read the data:
    training compares it when it starts)."""
    if not run.config.is_file() or not CheckpointStore(run.checkpoints).complete(warn=False):
        return
    saved = load_config(run.config)
    changed = [f"{key} {_value(saved, key)} -> {_value(cfg, key)}"
               for key, held in HELD_BY_CHECKPOINTS.items() if held(saved) != held(cfg)]
    new_classes = cfg.model.num_classes
    if new_classes is None and dataset_classes is not None and saved.model.num_classes is not None:
        new_classes = dataset_classes()
    if None not in (saved.model.num_classes, new_classes) and saved.model.num_classes != new_classes:
        changed.append(f"model.num_classes {saved.model.num_classes} -> {new_classes}")
    if changed:
        raise ConfigError(f"{run.path}: its checkpoints cannot be resumed with this config, which changes what they "
                          f"hold ({', '.join(changed)}). Give this config a new run.name; to resume the run, use its "
                          f"own config, {run.config} (left as it was)")


def _value(cfg: ExperimentConfig, key: str) -> str:
    """The value of `key` as a config file writes it (true, not True)."""
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    return str(value).lower() if isinstance(value, bool) else str(value)

"""The config a trained run is evaluated with: the one it was trained with (its `config.yaml`), with only the
evaluation's own `data.*` and `eval.*` settings changed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.data import dataset_num_classes
from pipeline.run.layout import RunDir

EVALUATION_SECTIONS = ("data.", "eval.")  # what an evaluation may set for itself


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The resolved config a run was trained with (`RUN_DIR/config.yaml`), with `overrides` of how to evaluate it:
    `data.*` (where the data is, batch per GPU, loader threads) and `eval.*` (scales, resize). The rest is what
    the weights were trained as, and stays."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {path.name}; is this a run directory (<run.out_dir>/<run.name>)?")
    other = [o for o in overrides if not o.startswith(EVALUATION_SECTIONS)]
    if other:
        raise ConfigError(f"an evaluation takes data.* and eval.* overrides only (the net, engine and schedule are "
                          f"the run's): {other[0]}")
    cfg = load_config(path, list(overrides))
    if cfg.model.num_classes is None:  # training writes it once it has read the dataset
        cfg.model.num_classes = dataset_num_classes(cfg.data)
    return cfg

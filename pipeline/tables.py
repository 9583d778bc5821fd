"""Table configs (`configs/tables/*.yaml`): the runs that fill one table or figure of the paper.

Each row names a training config (a path relative to the table file), optional overrides, the seeds to
run, and the paper's value of each metric. A run of a row with one seed is that config with
`run.seed=<seed>` and `run.name=<name>-seed<seed>`; sweeps submit these runs, the report reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import ConfigError, ExperimentConfig, load_config

KINDS = ("table", "curves", "responses")
PROTOCOLS = ("center", "tencrop", "multiscale")
# What each kind of table reads from a run: results.json metrics, metrics.jsonl curves, layer responses.
METRICS = {"table": ("top1_error", "top5_error"),
           "curves": ("train_top1_error", "val_top1_error", "loss"),
           "responses": ("layer_response_std",)}


@dataclass
class RowConfig:
    label: str
    config: str
    overrides: List[str] = field(default_factory=list)
    seeds: Optional[List[int]] = None  # None: the table's seeds
    paper: Dict[str, float] = field(default_factory=dict)
    panel: Optional[str] = None  # which panel of a figure


@dataclass
class TableConfig:
    title: str
    rows: List[RowConfig]
    kind: str = "table"
    metrics: List[str] = field(default_factory=lambda: ["top1_error"])
    protocol: str = "center"
    seeds: List[int] = field(default_factory=lambda: [0])


@dataclass(frozen=True)
class PlannedRun:
    """One training run a table needs."""

    row: int
    label: str
    seed: int
    config_path: Path
    overrides: tuple
    cfg: ExperimentConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.out_dir) / self.cfg.run.name


def load_table(path: str | Path) -> TableConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"table config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        table: TableConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TableConfig), data))
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        key = getattr(e, "full_key", "")
        raise ConfigError(f"{path}: {'key ' + repr(key) + ': ' if key else ''}{str(e).splitlines()[0]}") from None
    if table.kind not in KINDS:
        raise ConfigError(f"{path}: kind {table.kind!r} is not one of {', '.join(KINDS)}")
    if table.protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: protocol {table.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    for metric in table.metrics:
        if metric not in METRICS[table.kind]:
            raise ConfigError(f"{path}: metric {metric!r} is not recorded for a {table.kind} "
                              f"(recorded: {', '.join(METRICS[table.kind])})")
    for i, row in enumerate(table.rows):
        if not (path.parent / row.config).is_file():
            raise ConfigError(f"{path}: row {i} ({row.label}) names a run config that does not exist: {row.config}")
        unknown = set(row.paper) - set(table.metrics)
        if unknown:
            raise ConfigError(f"{path}: row {i} ({row.label}) gives paper values for metrics the table does not "
                              f"show: {', '.join(sorted(unknown))}")
    return table


def planned_runs(table_path: str | Path, runs_dir: Optional[str | Path] = None,
                 seeds: Optional[List[int]] = None, extra_overrides: tuple = ()) -> List[PlannedRun]:
    """Every (row, seed) run of a table, with its resolved config. Rows sharing a config share runs."""
    table_path = Path(table_path)
    table = load_table(table_path)
    runs: List[PlannedRun] = []
    for index, row in enumerate(table.rows):
        config_path = (table_path.parent / row.config).resolve()
        base = load_config(config_path, list(row.overrides))
        for seed in seeds or row.seeds or table.seeds:
            overrides = [*row.overrides, f"run.seed={seed}", f"run.name={base.run.name}-seed{seed}", *extra_overrides]
            if runs_dir is not None:
                overrides.append(f"run.out_dir={runs_dir}")
            cfg = load_config(config_path, overrides)
            runs.append(PlannedRun(index, row.label, seed, config_path, tuple(overrides), cfg))
    return runs


def unique_runs(runs: List[PlannedRun]) -> List[PlannedRun]:
    """One entry per run directory (a figure may show the same run in two panels)."""
    seen: Dict[Path, PlannedRun] = {}
    for run in runs:
        seen.setdefault(run.run_dir, run)
    return list(seen.values())

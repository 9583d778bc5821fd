"""Table configs (`configs/tables/*.yaml`): the runs that fill one table or figure of the paper.

Each row names a training config (a path relative to the table file), optional overrides, the seeds to
run, and the paper's value of each metric. A run of a row with one seed is that config with
`run.seed=<seed>` and `run.name=<name>-seed<seed>`; sweeps submit these runs, the report reads them.

- One model in two tables is one run: both rows name the same config, so they plan the same run
  directory and the second sweep skips it (Table 2's ResNet-34 is Table 3's ResNet-34 A).
- Where the paper gives a spread ("6.43 (6.61±0.16)": best of 5 runs, mean ± std), `paper` holds the
  number it shows first and `paper_spread` the mean, std and number of runs.
- A table's runs share a W&B group (the table's file name) and carry tags `<table>`, `row:<label>` and
  `seed:<seed>`; a run two tables share stays in the group of the table that submitted it first.
- `paper_config` names the config holding the paper's recipe for a row whose `config` departs from it
  on purpose (a large-batch preset); `recipe_departures` lists what a run changes against it.
- A value table may name its runs' training `curves` (Table 6's: Fig. 6's training and testing error): its
  report draws them beside the table, as a curve table's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import ConfigError, ExperimentConfig, config_to_dict, load_config
from pipeline.config.per_gpu_batch import gpu_share
from pipeline.config.schema import PROTOCOLS

KINDS = ("table", "curves", "responses")
# What each kind of table reads from a run: results.json metrics, metrics.jsonl curves, layer responses.
METRICS = {"table": ("top1_error", "top5_error"),
           "curves": ("train_top1_error", "val_top1_error", "loss"),
           "responses": ("layer_response_std",)}


# Keys that say where and how fast a run goes, not what it learns: never a departure from the paper.
# The seed is another sample of the same recipe, not a departure from it.
NOT_RECIPE = ("run.name", "run.out_dir", "run.seed", "run.device", "run.deterministic", "logging.", "slurm.",
              "checkpoint.", "data.root", "data.recipe_batch_per_gpu", "data.backend", "data.num_threads",
              "data.shuffle_buffer", "data.hw_decoder_load", "data.eval_batch_per_gpu", "eval.every_epochs",
              "eval.every_steps", "eval.layer_responses", "engine.name", "engine.zero_stage", "engine.compile",
              "engine.channels_last", "engine.activation_checkpointing", "engine.timeout_minutes",
              "engine.hang_timeout_minutes")


@dataclass
class PaperSpread:
    """What the paper adds to a value it reports as the best of several runs: their mean and std."""

    mean: float
    std: float
    runs: int


@dataclass
class RowConfig:
    label: str
    config: str
    overrides: List[str] = field(default_factory=list)
    seeds: Optional[List[int]] = None  # None: the table's seeds
    paper: Dict[str, float] = field(default_factory=dict)  # the number the paper's table shows first
    paper_spread: Dict[str, PaperSpread] = field(default_factory=dict)  # where it also gives mean ± std
    paper_config: Optional[str] = None  # the paper's recipe for this row; None: `config` is the paper's
    panel: Optional[str] = None  # which panel of a figure


@dataclass
class TableConfig:
    title: str
    rows: List[RowConfig]
    kind: str = "table"
    metrics: List[str] = field(default_factory=lambda: ["top1_error"])
    protocol: str = "center"
    seeds: List[int] = field(default_factory=lambda: [0])
    # A value table's figure: the training curves of its runs (training metric, then validation metric), drawn
    # beside the table as the paper draws them (Table 6's runs are Fig. 6's); none: no figure.
    curves: List[str] = field(default_factory=list)

    @property
    def curve_metrics(self) -> List[str]:
        """What the table's figure draws as curves: a curve table's metrics, a value table's `curves`."""
        return list(self.metrics) if self.kind == "curves" else list(self.curves)


@dataclass(frozen=True)
class TableEvaluation:
    """What a table reads from a run after training, beyond training's own records: a protocol's evaluation, or
    Fig. 7's layer responses (on the centre view)."""

    protocol: str
    layer_responses: bool = False

    @property
    def name(self) -> str:
        return "layer responses" if self.layer_responses else self.protocol

    @property
    def job_name(self) -> str:
        """The evaluation's name in its job's files (`RunDir.evaluation_job_id`)."""
        return "responses" if self.layer_responses else self.protocol


def table_evaluation(kind: str, protocol: str) -> Optional[TableEvaluation]:
    """The evaluation a table (of `kind`, read with `protocol`) needs after training, if any: curves are read from
    training's own log, and a centre-view table from training's final evaluation."""
    if kind == "responses":
        return TableEvaluation("center", layer_responses=True)
    if kind == "table" and protocol != "center":
        return TableEvaluation(protocol)
    return None


@dataclass(frozen=True)
class PlannedRun:
    """One training run a table needs."""

    row: int
    label: str
    seed: int
    config_path: Path
    overrides: tuple
    cfg: ExperimentConfig
    paper_cfg: Optional[ExperimentConfig] = None  # the row's paper recipe (planned_runs always sets it)

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
    if table.curves and table.kind != "table":
        raise ConfigError(f"{path}: curves are a value table's figure; a {table.kind} table draws its metrics")
    for metric in table.curves:
        if metric not in METRICS["curves"]:
            raise ConfigError(f"{path}: curve {metric!r} is not recorded (recorded: {', '.join(METRICS['curves'])})")
    for i, row in enumerate(table.rows):
        for config in filter(None, (row.config, row.paper_config)):
            if not (path.parent / config).is_file():
                raise ConfigError(f"{path}: row {i} ({row.label}) names a run config that does not exist: {config}")
        unknown = set(row.paper) - set(table.metrics)
        if unknown:
            raise ConfigError(f"{path}: row {i} ({row.label}) gives paper values for metrics the table does not "
                              f"show: {', '.join(sorted(unknown))}")
        alone = set(row.paper_spread) - set(row.paper)
        if alone:
            raise ConfigError(f"{path}: row {i} ({row.label}) gives a paper_spread without the paper value it "
                              f"belongs to (the best run's) for: {', '.join(sorted(alone))}")
    return table


def planned_runs(table_path: str | Path, runs_dir: Optional[str | Path] = None,
                 seeds: Optional[List[int]] = None, extra_overrides: tuple = (),
                 rows: Optional[Sequence[str]] = None) -> List[PlannedRun]:
    """Every (row, seed) run of a table (of the rows labelled `rows`, where given), with its resolved config. Rows
    sharing a config share runs."""
    table_path = Path(table_path)
    table = load_table(table_path)
    labels = [row.label for row in table.rows]
    unknown = [label for label in rows or [] if label not in labels]
    if unknown:
        raise ConfigError(f"{table_path} has no row {unknown[0]!r}; its rows: {', '.join(labels)}")
    runs: List[PlannedRun] = []
    for index, row in enumerate(table.rows):
        if rows and row.label not in rows:
            continue
        config_path = (table_path.parent / row.config).resolve()
        base = load_config(config_path, list(row.overrides))
        # The paper's recipe for this row: its paper_config, else its own config (without a sweep's extra overrides).
        paper_cfg = (load_config((table_path.parent / row.paper_config).resolve(), list(row.overrides))
                     if row.paper_config else base)
        for seed in seeds or row.seeds or table.seeds:
            overrides = [*row.overrides, f"run.seed={seed}", f"run.name={base.run.name}-seed{seed}", *extra_overrides]
            if runs_dir is not None:
                overrides.append(f"run.out_dir={runs_dir}")
            cfg = load_config(config_path, overrides)
            _label_for_wandb(cfg, table_path.stem, row.label, seed, overrides)
            runs.append(PlannedRun(index, row.label, seed, config_path, tuple(overrides), cfg, paper_cfg))
    return runs


def _label_for_wandb(cfg: ExperimentConfig, table: str, label: str, seed: int, overrides: List[str]) -> None:
    """Group a table's runs in W&B under the table's name, tagged with their row and seed, so that its UI
    shows them together; an explicit `logging.wandb_group=` or `logging.wandb_tags=` override wins."""
    given = {item.split("=", 1)[0] for item in overrides}
    if "logging.wandb_group" not in given:
        cfg.logging.wandb_group = table
    if "logging.wandb_tags" not in given:
        cfg.logging.wandb_tags = [table, f"row:{label}"[:64], f"seed:{seed}"]  # W&B refuses tags over 64 characters


def unique_runs(runs: List[PlannedRun]) -> List[PlannedRun]:
    """One entry per run directory (a figure may show the same run in two panels, a table two rows)."""
    seen: Dict[Path, PlannedRun] = {}
    for run in runs:
        seen.setdefault(run.run_dir, run)
    return list(seen.values())


def recipe_departures(paper: ExperimentConfig, run: ExperimentConfig, gpus: Optional[int] = None) -> List[str]:
    """What `run` changes in the paper's recipe `paper`, one `key: paper's → run's` item per key.

    Every key counts except where and how fast the run goes (`NOT_RECIPE`). The peak learning rate, which
    the linear scaling rule derives from optim.lr and the global batch, is listed as well when it differs,
    and so is the BN batch (the images each BN statistic is taken over), which follows from the run's
    number of GPUs (`gpus`, where known) against the recipe's images per GPU.
    """

    ours, theirs = _flat(config_to_dict(run)), _flat(config_to_dict(paper))
    changed = [key for key in theirs if not key.startswith(NOT_RECIPE) and ours.get(key) != theirs[key]]
    items = [f"{key}: {_show(theirs[key])} → {_show(ours.get(key))}" for key in changed]
    if _peak_lr(run) != _peak_lr(paper):
        items.append(f"peak lr: {_show(_peak_lr(paper))} → {_show(_peak_lr(run))}")
    if gpus is not None:
        recipe = paper.data.recipe_batch_per_gpu  # the paper's batch per GPU is its BN batch
        share = gpu_share(run, gpus)
        if share.bn_batch != recipe:
            items.append(f"BN batch: {recipe} → {share.bn_batch:g} ({share.global_batch} images on {share.gpus} GPUs)")
    return items


def _peak_lr(cfg: ExperimentConfig) -> float:
    scale = cfg.data.batch_size / cfg.schedule.base_batch_size if cfg.schedule.scale_lr else 1.0
    return round(cfg.optim.lr * scale, 10)  # round: 0.1 * 8192 / 256 is 3.2, not 3.2000000000000006


def _flat(tree: dict, prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)

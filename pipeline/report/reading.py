"""What a table's runs have to offer the report, read from their run directories' files alone.

Each planned run of a table (`pipeline.tables`) is read from results.json, metrics.jsonl, layer_responses.json and
config.yaml: its state (`pipeline.run.state`, or what a caller that asks SLURM passes as `states_of`), its
values with the table's protocol, its curves, its layer responses, its departures from the paper's recipe and the
W&B model artifact its training logged.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_config
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics
from pipeline.run.results import protocol_result, read_layer_responses, read_results
from pipeline.run.state import read_run_state
from pipeline.tables.request import load_request
from pipeline.tables.spec import PaperSpread, PlannedRun, TableConfig, load_table, planned_runs, recipe_departures

# run directories -> their states, in order: objects with .state, .step, .total_steps, .progress and .job_id
StatesOf = Callable[[Sequence[Path]], Sequence[Any]]


def states_from_files(run_dirs: Sequence[Path]) -> list[Any]:
    return [read_run_state(run_dir) for run_dir in run_dirs]


class ReportError(Exception):
    """A run records something the table cannot use: names the run, the file and the key."""


@dataclass
class RunReading:
    """What one (row, seed) run has to offer the report."""

    run: PlannedRun
    state: str  # done | missing | not evaluated, or the run's state (submitted | running | stopped | ...)
    detail: str = ""  # progress, or the command that would finish it
    values: dict[str, float] = field(default_factory=dict)  # table metrics
    curves: dict[str, list[tuple]] = field(default_factory=dict)  # metric -> [(step, value)]
    responses: list[float] | None = None
    departures: list[str] = field(default_factory=list)  # from the paper's recipe
    model: dict | None = None  # the trained net's W&B artifact: model_artifact, model_export (, model_url online)


@dataclass
class RowReading:
    label: str
    panel: str | None
    paper: dict[str, float]
    runs: list[RunReading]
    paper_spread: dict[str, PaperSpread] = field(default_factory=dict)

    @property
    def done(self) -> list[RunReading]:
        return [r for r in self.runs if r.state == "done"]

    def stats(self, metric: str, primary: str | None = None) -> tuple | None:
        """(mean, std or None, n, best) over the seeds that are done.

        best: `metric` of the best run, the one with the lowest `primary` (default: `metric`) error, so
        that every metric of a "best" row comes from one model, as the paper's best of 5 does."""
        done = [r for r in self.done if metric in r.values]
        if not done:
            return None
        values = [r.values[metric] for r in done]
        best = min(done, key=lambda r: r.values.get(primary or metric, r.values[metric])).values[metric]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values), best

    def departures(self) -> str:
        """The row's departures from the paper's recipe; per seed where its runs differ."""
        if not self.runs:
            return "–"
        by_seed = {r.run.seed: "; ".join(r.departures) or "none" for r in self.runs}
        if len(set(by_seed.values())) == 1:
            return next(iter(by_seed.values()))
        return " / ".join(f"seed {seed}: {text}" for seed, text in by_seed.items())


# -- reading runs -------------------------------------------------------------------------------------

def read_table(table_path: Path, runs_dir: Path | None = None,
               states_of: StatesOf = states_from_files) -> tuple[TableConfig, list[RowReading]]:
    """The table's rows and runs: those `launch reproduce` was asked for in `runs_dir` (its seeds, rows and
    overrides), else every row with its seeds."""
    table = load_table(table_path)
    request = load_request(runs_dir, table_path)
    rows = [RowReading(row.label, row.panel, dict(row.paper), [], dict(row.paper_spread)) for row in table.rows]
    planned = request.planned(runs_dir) if request else planned_runs(table_path, runs_dir)
    for run, status in zip(planned, states_of([run.run_dir for run in planned])):
        rows[run.row].runs.append(read_run(run, table, status))
    asked = request.rows if request and request.rows else [row.label for row in table.rows]
    return table, [row for row in rows if row.label in asked]


def read_run(run: PlannedRun, table: TableConfig, status: Any) -> RunReading:
    """What the report shows of a run, `status` its state (see StatesOf)."""
    run_dir = run.run_dir
    departures = _departures(run)
    if not RunDir(run_dir).exists():
        return RunReading(run, "missing", f"no run directory {run_dir}", departures=departures)
    reading = RunReading(run, status.state, departures=departures)
    if table.curve_metrics:
        reading.curves = _curves(run_dir, table.curve_metrics)
    if status.state != "finished":
        of_total = f" of {status.total_steps} ({status.progress:.0%})" if status.total_steps else ""
        # A run that is not running counts its saved steps: where it resumes (`pipeline.run.state`).
        progress = f" at step {status.step}{of_total}" if status.state in ("running", "submitted") else \
            f", saved up to step {status.step}{of_total}" if status.step else ", nothing saved"
        if status.state == "submitted":  # the files cannot tell whether the job waits, runs or failed
            reading.detail = f"SLURM job {status.job_id},{progress}"
        else:
            reading.detail = f"{status.state}{progress}" + (f", job {status.job_id}" if status.job_id else "")
        return reading
    reading.state, reading.detail = "done", ""
    reading.model = _model_artifact(run_dir)
    if table.kind == "table":
        _read_values(reading, table)
    elif table.kind == "curves":
        for metric in table.metrics:
            if not reading.curves.get(metric):
                raise ReportError(f"{RunDir(run_dir).metrics}: the finished run never logged {metric!r} "
                                  f"(logged: {', '.join(sorted(_logged_keys(run_dir))) or 'nothing'})")
    else:
        responses = read_layer_responses(run_dir)
        if responses is None:
            reading.state = "not evaluated"
            reading.detail = f"`python -m pipeline.evaluate {run_dir} --layer-responses`"
        else:
            reading.responses = list(responses["std"])
    return reading


def _departures(run: PlannedRun) -> list[str]:
    """The run's departures from its row's paper recipe, from the config it ran with (else the planned one)."""
    saved = RunDir(run.run_dir).config
    try:
        cfg = load_config(saved) if saved.exists() else run.cfg
    except ConfigError as e:
        raise ReportError(f"{saved}: the run's config does not load: {e}") from None
    return recipe_departures(run.paper_cfg or run.cfg, cfg, _gpus(run.run_dir, cfg))


def _gpus(run_dir: Path, cfg) -> int:
    """The GPUs (ranks) a run trained on: its latest start's, else what its config asks SLURM for."""
    starts = [r for r in read_metrics(run_dir) if r.get("event") == "start" and "world_size" in r]
    if starts:
        return int(starts[-1]["world_size"])
    return cfg.slurm.gpus


def _read_values(reading: RunReading, table: TableConfig) -> None:
    run_dir = reading.run.run_dir
    result = protocol_result(read_results(run_dir), table.protocol)
    if result is None:
        reading.state = "not evaluated"
        reading.detail = f"`python -m pipeline.evaluate {run_dir} --protocol {table.protocol}`"
        return
    for metric in table.metrics:
        if metric not in result:
            raise ReportError(f"{RunDir(run_dir).results}: the {table.protocol} result has no {metric!r} "
                              f"(it records: {', '.join(sorted(result))})")
        reading.values[metric] = float(result[metric])


def _curves(run_dir: Path, metrics: list[str]) -> dict[str, list[tuple]]:
    curves: dict[str, list[tuple]] = {m: [] for m in metrics}
    for record in read_metrics(run_dir):
        for metric in metrics:
            if metric in record and "step" in record:
                curves[metric].append((record["step"], float(record[metric])))
    return curves


def _model_artifact(run_dir: Path) -> dict | None:
    """The W&B model artifact the run's training logged at its end (`pipeline.train.model_artifact`), the latest."""
    logged = [r for r in read_metrics(run_dir) if "model_artifact" in r and "model_export" in r]
    return logged[-1] if logged else None


def _logged_keys(run_dir: Path) -> set:
    return {k for record in read_metrics(run_dir) for k in record}

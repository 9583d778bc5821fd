"""`python -m pipeline.report configs/tables/<t>.yaml [...] [--runs DIR] [--out DIR]`: the paper beside us.

For each table config (`pipeline.tables`) the report reads the planned runs' directories and writes
`<out>/<table>.md`: the paper's value, ours, the difference, each row's state (missing, submitted to SLURM,
running with its progress, stopped, or trained but not yet evaluated with the table's protocol, with the
command that does it) and each row's departures from the paper's recipe. Curve tables (Figs. 4 and 6) and the
layer-response table (Fig. 7) also get `<out>/<table>.png`.

Values are in the paper's form: one run's value, or for several runs "best (mean ± std)", the best run
being the one with the lowest error on the table's first metric (the paper's "6.43 (6.61±0.16)" for
ResNet-110, best of 5). The difference compares means where both sides have several runs.

Departures are computed from each run's own resolved config (`<run>/config.yaml`; the planned config
while the run has none) against the row's paper recipe: a run submitted with `launch sweep ... --
data.batch_size=8192` lists `data.batch_size: 256 → 8192` and the `peak lr` it implies.

Everything is read from the run directories' own files: results.json, metrics.jsonl, layer_responses.json,
config.yaml, and a run's state from them too (`pipeline.run_state`): the report never asks SLURM, so a
submitted run is "submitted" whether its job waits, runs or failed (`python -m launch status` asks the
queue). A caller that knows more passes its own `states_of` (e.g. `launch.status.run_statuses`, which asks
the queue once for all the runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.config import ConfigError, load_config
from pipeline.metrics import read_metrics
from pipeline.results import protocol_result, read_layer_responses, read_results
from pipeline.run_state import read_run_state
from pipeline.table_request import load_request
from pipeline.tables import PaperSpread, PlannedRun, TableConfig, load_table, planned_runs, recipe_departures


# run directories -> their states, in order: objects with .state, .step, .total_steps, .progress and .job_id
StatesOf = Callable[[Sequence[Path]], Sequence[Any]]


def states_from_files(run_dirs: Sequence[Path]) -> List[Any]:
    return [read_run_state(run_dir) for run_dir in run_dirs]


class ReportError(Exception):
    """A run records something the table cannot use: names the run, the file and the key."""


@dataclass
class RunReading:
    """What one (row, seed) run has to offer the report."""

    run: PlannedRun
    state: str  # done | missing | not evaluated, or the run's state (submitted | running | stopped | ...)
    detail: str = ""  # progress, or the command that would finish it
    values: Dict[str, float] = field(default_factory=dict)  # table metrics
    curves: Dict[str, List[tuple]] = field(default_factory=dict)  # metric -> [(step, value)]
    responses: Optional[List[float]] = None
    departures: List[str] = field(default_factory=list)  # from the paper's recipe


@dataclass
class RowReading:
    label: str
    panel: Optional[str]
    paper: Dict[str, float]
    runs: List[RunReading]
    paper_spread: Dict[str, PaperSpread] = field(default_factory=dict)

    @property
    def done(self) -> List[RunReading]:
        return [r for r in self.runs if r.state == "done"]

    def stats(self, metric: str, primary: Optional[str] = None) -> Optional[tuple]:
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

def read_table(table_path: Path, runs_dir: Optional[Path] = None,
               states_of: StatesOf = states_from_files) -> tuple[TableConfig, List[RowReading]]:
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
    if not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.jsonl").exists():
        return RunReading(run, "missing", f"no run directory {run_dir}", departures=departures)
    reading = RunReading(run, status.state, departures=departures)
    if table.kind == "curves":
        reading.curves = _curves(run_dir, table.metrics)
    if status.state != "finished":
        progress = f" at step {status.step}" + (f" of {status.total_steps} ({status.progress:.0%})"
                                                 if status.total_steps else "")
        if status.state == "submitted":  # the files cannot tell whether the job waits, runs or failed
            reading.detail = f"SLURM job {status.job_id},{progress}"
        else:
            reading.detail = f"{status.state}{progress}" + (f", job {status.job_id}" if status.job_id else "")
        return reading
    reading.state, reading.detail = "done", ""
    if table.kind == "table":
        _read_values(reading, table)
    elif table.kind == "curves":
        for metric in table.metrics:
            if not reading.curves.get(metric):
                raise ReportError(f"{run_dir / 'metrics.jsonl'}: the finished run never logged {metric!r} "
                                  f"(logged: {', '.join(sorted(_logged_keys(run_dir))) or 'nothing'})")
    else:
        responses = read_layer_responses(run_dir)
        if responses is None:
            reading.state = "not evaluated"
            reading.detail = f"`python -m pipeline.evaluate {run_dir} --layer-responses`"
        else:
            reading.responses = list(responses["std"])
    return reading


def _departures(run: PlannedRun) -> List[str]:
    """The run's departures from its row's paper recipe, from the config it ran with (else the planned one)."""
    saved = run.run_dir / "config.yaml"
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
    slurm = cfg.slurm
    return slurm.nodes * (slurm.tasks_per_node or max(1, slurm.gpus_per_node))


def _read_values(reading: RunReading, table: TableConfig) -> None:
    run_dir = reading.run.run_dir
    result = protocol_result(read_results(run_dir), table.protocol)
    if result is None:
        reading.state = "not evaluated"
        reading.detail = f"`python -m pipeline.evaluate {run_dir} --protocol {table.protocol}`"
        return
    for metric in table.metrics:
        if metric not in result:
            raise ReportError(f"{run_dir / 'results.json'}: the {table.protocol} result has no {metric!r} "
                              f"(it records: {', '.join(sorted(result))})")
        reading.values[metric] = float(result[metric])


def _curves(run_dir: Path, metrics: List[str]) -> Dict[str, List[tuple]]:
    curves: Dict[str, List[tuple]] = {m: [] for m in metrics}
    for record in read_metrics(run_dir):
        for metric in metrics:
            if metric in record and "step" in record:
                curves[metric].append((record["step"], float(record[metric])))
    return curves


def _logged_keys(run_dir: Path) -> set:
    return {k for record in read_metrics(run_dir) for k in record}


# -- writing the report -------------------------------------------------------------------------------

DEPARTURES = "departures from the paper's recipe"
_NAMES = {"top1_error": "top-1 err. (%)", "top5_error": "top-5 err. (%)",
          "train_top1_error": "train err. (%)", "val_top1_error": "val err. (%)"}


def render(table_path: Path, table: TableConfig, rows: List[RowReading], figure: Optional[str],
           runs_dir: Optional[Path] = None) -> str:
    lines = [f"# {table.title}", "", f"From `{table_path}`; protocol: {table.protocol}. "
             "Ours: the value of the one run done, or best (mean ± std) over the seeds that are done, as the "
             "paper writes a best of several runs (n: done / planned); diff.: our mean minus the paper's "
             "(its mean where it gives one). Departures: what the runs change in the paper's recipe.", ""]
    if figure:
        lines += [f"![{table.title}]({figure})", ""]
    header, cells = table_cells(table, rows)
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    waiting = [r for row in rows for r in row.runs if r.state != "done"]
    if waiting:
        lines += ["", "## Runs not done", ""]
        lines += [f"- {r.run.label}, seed {r.run.seed}: " +
                  (r.detail if r.detail.startswith(r.state) else r.state + (f": {r.detail}" if r.detail else ""))
                  for r in waiting]
        if any(r.state in ("missing", "stopped", "failed", "not evaluated") for r in waiting):
            request = load_request(runs_dir, table_path)
            again = request.command(runs_dir) if request else \
                f"python -m launch reproduce {table_path} --runs {runs_dir}" if runs_dir else \
                f"python -m launch sweep {table_path}"
            lines += ["", "Train, evaluate and report what is missing, failed or stopped (finished and queued work is "
                          f"skipped, stopped runs resume): `{again}`"]
        if any(r.state == "submitted" for r in waiting):
            lines += ["", "Whether the submitted runs are queued, running or failed, SLURM knows (this report reads "
                          f"files only): `python -m launch status {table_path}" +
                          (f" --runs {runs_dir}" if runs_dir else "") + "`"]
    return "\n".join(lines) + "\n"


def table_cells(table: TableConfig, rows: List[RowReading]) -> Tuple[List[str], List[List[str]]]:
    """The report's table as a header and one list of cells per row (Markdown here, a W&B table there)."""
    if table.kind == "table":
        return _value_table(table, rows)
    if table.kind == "curves":
        return _curve_table(table, rows)
    return _response_table(rows)


def _value_table(table: TableConfig, rows: List[RowReading]) -> Tuple[List[str], List[List[str]]]:
    header = ["row"]
    for metric in table.metrics:
        name = _NAMES.get(metric, metric)
        header += [f"paper {name}", f"ours {name}", "diff."]
    header += ["n", "state", DEPARTURES]
    lines = []
    for row in rows:
        cells = [row.label]
        for metric in table.metrics:
            paper, spread = row.paper.get(metric), row.paper_spread.get(metric)
            ours = row.stats(metric, primary=table.metrics[0])
            paper_mean = spread.mean if spread is not None else paper
            cells += [_fmt_paper(paper, spread), _fmt_stats(ours),
                      f"{ours[0] - paper_mean:+.2f}" if ours is not None and paper_mean is not None else "–"]
        cells += [f"{len(row.done)}/{len(row.runs)}", _row_state(row), row.departures()]
        lines.append(cells)
    return header, lines


def _curve_table(table: TableConfig, rows: List[RowReading]) -> Tuple[List[str], List[List[str]]]:
    header = ["row", "panel", *[f"final {_NAMES.get(m, m)}" for m in table.metrics], "state", DEPARTURES]
    lines = []
    for row in rows:
        run = _shown_run(row)
        finals = [_fmt(run.curves[m][-1][1]) if run and run.curves.get(m) else "–" for m in table.metrics]
        lines.append([row.label, row.panel or "", *finals, _row_state(row), row.departures()])
    return header, lines


def _response_table(rows: List[RowReading]) -> Tuple[List[str], List[List[str]]]:
    header = ["row", "3x3 layers", "mean std", "max std", "state", DEPARTURES]
    lines = []
    for row in rows:
        run = next((r for r in row.done if r.responses), None)
        stds = run.responses if run else None
        cells = [str(len(stds)), _fmt(statistics.fmean(stds)), _fmt(max(stds))] if stds else ["–"] * 3
        lines.append([row.label, *cells, _row_state(row), row.departures()])
    return header, lines


def _shown_run(row: RowReading) -> Optional[RunReading]:
    """The run a figure draws for a row: the first seed that is done, else the furthest along."""
    with_curves = [r for r in row.runs if any(r.curves.values())]
    done = [r for r in with_curves if r.state == "done"]
    return (done or with_curves or [None])[0]


def _row_state(row: RowReading) -> str:
    states = [r.state for r in row.runs]
    if all(s == "done" for s in states):
        return "done"
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    parts = [f"{s} {n}" if len(states) > 1 else s for s, n in counts.items()]
    running = [r for r in row.runs if r.state == "running" and r.detail]
    if len(states) == 1 and running:
        return running[0].detail
    return ", ".join(parts)


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_paper(value: Optional[float], spread: Optional[PaperSpread]) -> str:
    """The paper's value, in its own form where it reports several runs: "6.43 (6.61 ± 0.16)"."""
    if value is None or spread is None:
        return _fmt(value)
    return f"{value:.2f} ({spread.mean:.2f} ± {spread.std:.2f})"


def _fmt_stats(stats: Optional[tuple]) -> str:
    """Ours in the paper's form: one run's value, or best (mean ± std) over several."""
    if stats is None:
        return "–"
    mean, std, n, best = stats
    return f"{mean:.2f}" if n == 1 else f"{best:.2f} ({mean:.2f} ± {std:.2f})"


def write_report(table_path: Path, runs_dir: Optional[Path], out_dir: Path,
                 states_of: StatesOf = states_from_files, wandb: bool = False) -> List[Path]:
    """Read the table's runs and write `<out_dir>/<table>.md` (and `.png` for figures); returns the files.

    `states_of`: how the runs' states are read (default: from their files alone). `wandb`: also log the table as a
    W&B table, in the W&B project and mode of the table's runs (`pipeline.report_wandb`)."""
    from pipeline.figures import plot_curves, plot_responses

    table, rows = read_table(table_path, runs_dir, states_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = None
    if table.kind == "curves":
        splits = [run.run.cfg.data.eval_split for row in rows for run in row.runs]
        figure = plot_curves(table, [(row.label, row.panel, _shown_run(row)) for row in rows],
                             out_dir / f"{table_path.stem}.png", eval_split=(splits or ["val"])[0])
    elif table.kind == "responses":
        shown = [(row.label, next((r.responses for r in row.done if r.responses), None)) for row in rows]
        figure = plot_responses(table, shown, out_dir / f"{table_path.stem}.png")
    markdown = out_dir / f"{table_path.stem}.md"
    markdown.write_text(render(table_path, table, rows, figure.name if figure else None, runs_dir))
    if wandb:
        from pipeline.report_wandb import log_report_table

        header, cells = table_cells(table, rows)
        log_report_table(table_path.stem, table.title, header, cells, _runs_logging(rows), out_dir)
    return [markdown] + ([figure] if figure else [])


def _runs_logging(rows: List[RowReading]):
    """The W&B settings the table's runs used: the first run's saved config, else its planned one."""
    first = next(r.run for row in rows for r in row.runs)
    saved = first.run_dir / "config.yaml"
    return (load_config(saved) if saved.exists() else first.cfg).logging


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help="table configs, e.g. configs/tables/table6.yaml")
    parser.add_argument("--runs", type=Path,
                        help="the directory holding the runs (default: each config's run.out_dir)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where to write (default: reports)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log each table as a W&B table, grouped with its runs (their W&B project and mode)")
    args = parser.parse_args(argv)
    for table in args.tables:
        try:
            written = write_report(Path(table), args.runs, args.out, wandb=args.wandb)
        except (ConfigError, ReportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(written[0].read_text())
        print("written: " + ", ".join(map(str, written)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

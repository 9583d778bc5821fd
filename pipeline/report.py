"""`python -m pipeline.report configs/tables/<t>.yaml [...] [--runs DIR] [--out DIR]`: the paper beside us.

For each table config (`pipeline.tables`) the report reads the planned runs' directories and writes
`<out>/<table>.md`: the paper's value, ours, the difference, each row's state (missing, queued, running
with its progress, stopped, or trained but not yet evaluated with the table's protocol, with the command
that does it) and each row's departures from the paper's recipe. Curve tables (Figs. 4 and 6) and the
layer-response table (Fig. 7) also get `<out>/<table>.png`.

Values are in the paper's form: one run's value, or for several runs "best (mean ± std)", the best run
being the one with the lowest error on the table's first metric (the paper's "6.43 (6.61±0.16)" for
ResNet-110, best of 5). The difference compares means where both sides have several runs.

Departures are computed from each run's own resolved config (`<run>/config.yaml`; the planned config
while the run has none) against the row's paper recipe: a run submitted with `launch sweep ... --
data.batch_size=8192` lists `data.batch_size: 256 → 8192` and the `peak lr` it implies.

Everything is read from the run directories' own files: results.json, metrics.jsonl, layer_responses.json,
config.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from pipeline.config import ConfigError, load_config
from pipeline.metrics import read_metrics
from pipeline.results import protocol_result, read_layer_responses, read_results
from pipeline.tables import PaperSpread, PlannedRun, TableConfig, load_table, planned_runs, recipe_departures


class ReportError(Exception):
    """A run records something the table cannot use: names the run, the file and the key."""


@dataclass
class RunReading:
    """What one (row, seed) run has to offer the report."""

    run: PlannedRun
    state: str  # done | missing | queued | running | requeued | stopped | failed | not evaluated
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

def read_table(table_path: Path, runs_dir: Optional[Path] = None) -> tuple[TableConfig, List[RowReading]]:
    table = load_table(table_path)
    rows = [RowReading(row.label, row.panel, dict(row.paper), [], dict(row.paper_spread)) for row in table.rows]
    for run in planned_runs(table_path, runs_dir):
        rows[run.row].runs.append(read_run(run, table))
    return table, rows


def read_run(run: PlannedRun, table: TableConfig) -> RunReading:
    from launch.status import run_status

    run_dir = run.run_dir
    departures = _departures(run)
    if not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.jsonl").exists():
        return RunReading(run, "missing", f"no run directory {run_dir}", departures=departures)
    status = run_status(run_dir)
    reading = RunReading(run, status.state, departures=departures)
    if table.kind == "curves":
        reading.curves = _curves(run_dir, table.metrics)
    if status.state != "finished":
        progress = f" at step {status.step}" + (f" of {status.total_steps} ({status.progress:.0%})"
                                                 if status.total_steps else "")
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
    return recipe_departures(run.paper_cfg or run.cfg, cfg)


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
    if table.kind == "table":
        lines += _value_table(table, rows)
    elif table.kind == "curves":
        lines += _curve_table(table, rows)
    else:
        lines += _response_table(rows)
    waiting = [r for row in rows for r in row.runs if r.state != "done"]
    if waiting:
        lines += ["", "## Runs not done", ""]
        lines += [f"- {r.run.label}, seed {r.run.seed}: {r.state}" + (f": {r.detail}" if r.detail else "")
                  for r in waiting]
        if any(r.state in ("missing", "stopped", "failed") for r in waiting):
            lines += ["", f"Submit the missing and stopped runs (finished ones are skipped, stopped ones resume): "
                          f"`python -m launch sweep {table_path}" + (f" --runs {runs_dir}" if runs_dir else "") + "`"]
    return "\n".join(lines) + "\n"


def _value_table(table: TableConfig, rows: List[RowReading]) -> List[str]:
    header = ["row"]
    for metric in table.metrics:
        name = _NAMES.get(metric, metric)
        header += [f"paper {name}", f"ours {name}", "diff."]
    header += ["n", "state", DEPARTURES]
    lines = _markdown_header(header)
    for row in rows:
        cells = [row.label]
        for metric in table.metrics:
            paper, spread = row.paper.get(metric), row.paper_spread.get(metric)
            ours = row.stats(metric, primary=table.metrics[0])
            paper_mean = spread.mean if spread is not None else paper
            cells += [_fmt_paper(paper, spread), _fmt_stats(ours),
                      f"{ours[0] - paper_mean:+.2f}" if ours is not None and paper_mean is not None else "–"]
        cells += [f"{len(row.done)}/{len(row.runs)}", _row_state(row), row.departures()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _curve_table(table: TableConfig, rows: List[RowReading]) -> List[str]:
    lines = _markdown_header(["row", "panel", *[f"final {_NAMES.get(m, m)}" for m in table.metrics], "state",
                              DEPARTURES])
    for row in rows:
        run = _shown_run(row)
        finals = [_fmt(run.curves[m][-1][1]) if run and run.curves.get(m) else "–" for m in table.metrics]
        lines.append("| " + " | ".join([row.label, row.panel or "", *finals, _row_state(row), row.departures()])
                     + " |")
    return lines


def _response_table(rows: List[RowReading]) -> List[str]:
    lines = _markdown_header(["row", "3x3 layers", "mean std", "max std", "state", DEPARTURES])
    for row in rows:
        run = next((r for r in row.done if r.responses), None)
        stds = run.responses if run else None
        cells = [str(len(stds)), _fmt(statistics.fmean(stds)), _fmt(max(stds))] if stds else ["–"] * 3
        lines.append("| " + " | ".join([row.label, *cells, _row_state(row), row.departures()]) + " |")
    return lines


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


def _markdown_header(cells: List[str]) -> List[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "|".join("---" for _ in cells) + "|"]


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


def write_report(table_path: Path, runs_dir: Optional[Path], out_dir: Path) -> List[Path]:
    """Read the table's runs and write `<out_dir>/<table>.md` (and `.png` for figures); returns the files."""
    from pipeline.figures import plot_curves, plot_responses

    table, rows = read_table(table_path, runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = None
    if table.kind == "curves":
        figure = plot_curves(table, [(row.label, row.panel, _shown_run(row)) for row in rows],
                             out_dir / f"{table_path.stem}.png")
    elif table.kind == "responses":
        shown = [(row.label, next((r.responses for r in row.done if r.responses), None)) for row in rows]
        figure = plot_responses(table, shown, out_dir / f"{table_path.stem}.png")
    markdown = out_dir / f"{table_path.stem}.md"
    markdown.write_text(render(table_path, table, rows, figure.name if figure else None, runs_dir))
    return [markdown] + ([figure] if figure else [])


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help="table configs, e.g. configs/tables/table6.yaml")
    parser.add_argument("--runs", type=Path,
                        help="the directory holding the runs (default: each config's run.out_dir)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where to write (default: reports)")
    args = parser.parse_args(argv)
    for table in args.tables:
        try:
            written = write_report(Path(table), args.runs, args.out)
        except (ConfigError, ReportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(written[0].read_text())
        print("written: " + ", ".join(map(str, written)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

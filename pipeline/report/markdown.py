"""The report as Markdown: the paper's values beside ours in the paper's form, each row's state and departures, the
trained models logged to W&B, the runs not done with the command that finishes them; `table_cells` is the same
table for W&B."""

from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.report.reading import RowReading, RunReading
from pipeline.tables.request import load_request
from pipeline.tables.spec import PaperSpread, TableConfig

DEPARTURES = "departures from the paper's recipe"
_NAMES = {"top1_error": "top-1 err. (%)", "top5_error": "top-5 err. (%)",
          "train_top1_error": "train err. (%)", "val_top1_error": "val err. (%)"}


def render(table_path: Path, table: TableConfig, rows: list[RowReading], figure: str | None,
           runs_dir: Path | None = None) -> str:
    lines = [f"# {table.title}", "", f"From `{table_path}`; protocol: {table.protocol}. "
             "Ours: the value of the one run done, or best (mean ± std) over the seeds that are done, as the "
             "paper writes a best of several runs (n: done / planned); diff.: our mean minus the paper's "
             "(its mean where it gives one). Departures: what the runs change in the paper's recipe.", ""]
    if figure:
        lines += [f"![{table.title}]({figure})", ""]
    header, cells = table_cells(table, rows)
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    models = [r for row in rows for r in row.done if r.model]
    if models:
        lines += ["", "## Trained models", ""]
        lines += [f"- {r.run.label}, seed {r.run.seed}: {model_link(r.model)}" for r in models]
    waiting = [r for row in rows for r in row.runs if r.state != "done"]
    if waiting:
        lines += ["", "## Runs not done", ""]
        lines += [f"- {r.run.label}, seed {r.run.seed}: " +
                  (r.detail if r.detail.startswith(r.state) else r.state + (f": {r.detail}" if r.detail else ""))
                  for r in waiting]
        if any(r.state in ("missing", "stopped", "cancelled", "timeout", "preempted", "failed", "not evaluated")
               for r in waiting):
            request = load_request(runs_dir, table_path)
            again = request.command(runs_dir) if request else \
                f"python -m launch reproduce {table_path} --runs {runs_dir}" if runs_dir else \
                f"python -m launch sweep {table_path}"
            lines += ["", "Train, evaluate and report what is missing, failed, cancelled or stopped (finished and "
                          f"queued work is skipped, stopped runs resume from their last checkpoint): `{again}`"]
        if any(r.state == "submitted" for r in waiting):
            lines += ["", "Whether the submitted runs are queued, running or failed, SLURM knows (this report reads "
                          f"files only): `python -m launch status {table_path}" +
                          (f" --runs {runs_dir}" if runs_dir else "") + "`"]
    return "\n".join(lines) + "\n"


def model_link(model: dict) -> str:
    """A run's W&B model artifact: its link where the run was online, else its name to sync; and its files here."""
    name, folder = model["model_artifact"], model["model_export"]
    where = f"[{name}]({model['model_url']})" if model.get("model_url") else \
        f"`{name}` (W&B offline: `wandb sync` uploads it)"
    return f"{where}, exported to `{folder}`"


def table_cells(table: TableConfig, rows: list[RowReading]) -> tuple[list[str], list[list[str]]]:
    """The report's table as a header and one list of cells per row (Markdown here, a W&B table there)."""
    if table.kind == "table":
        return _value_table(table, rows)
    if table.kind == "curves":
        return _curve_table(table, rows)
    return _response_table(rows)


def _value_table(table: TableConfig, rows: list[RowReading]) -> tuple[list[str], list[list[str]]]:
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


def _curve_table(table: TableConfig, rows: list[RowReading]) -> tuple[list[str], list[list[str]]]:
    header = ["row", "panel", *[f"final {_NAMES.get(m, m)}" for m in table.metrics], "state", DEPARTURES]
    lines = []
    for row in rows:
        run = shown_run(row)
        finals = [_fmt(run.curves[m][-1][1]) if run and run.curves.get(m) else "–" for m in table.metrics]
        lines.append([row.label, row.panel or "", *finals, _row_state(row), row.departures()])
    return header, lines


def _response_table(rows: list[RowReading]) -> tuple[list[str], list[list[str]]]:
    header = ["row", "3x3 layers", "mean std", "max std", "state", DEPARTURES]
    lines = []
    for row in rows:
        run = next((r for r in row.done if r.responses), None)
        stds = run.responses if run else None
        cells = [str(len(stds)), _fmt(statistics.fmean(stds)), _fmt(max(stds))] if stds else ["–"] * 3
        lines.append([row.label, *cells, _row_state(row), row.departures()])
    return header, lines


def shown_run(row: RowReading) -> RunReading | None:
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


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_paper(value: float | None, spread: PaperSpread | None) -> str:
    """The paper's value, in its own form where it reports several runs: "6.43 (6.61 ± 0.16)"."""
    if value is None or spread is None:
        return _fmt(value)
    return f"{value:.2f} ({spread.mean:.2f} ± {spread.std:.2f})"


def _fmt_stats(stats: tuple | None) -> str:
    """Ours in the paper's form: one run's value, or best (mean ± std) over several."""
    if stats is None:
        return "–"
    mean, std, n, best = stats
    return f"{mean:.2f}" if n == 1 else f"{best:.2f} ({mean:.2f} ± {std:.2f})"

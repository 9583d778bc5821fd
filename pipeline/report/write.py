"""A table's report written: its runs read, the Markdown and the figure (curves, layer responses) written, and
the table logged to W&B where asked."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import load_config
from pipeline.report.figures import plot_curves, plot_responses
from pipeline.report.markdown import render, shown_run, table_cells
from pipeline.report.reading import RowReading, StatesOf, read_table, states_from_files
from pipeline.report.wandb_table import log_report_table
from pipeline.run.layout import RunDir


def write_report(table_path: Path, runs_dir: Path | None, out_dir: Path,
                 states_of: StatesOf = states_from_files, wandb: bool = False) -> list[Path]:
    """Read the table's runs and write `<out_dir>/<table>.md` (and `.png` for figures and for value tables that
    name their training `curves`); returns the files.

    `states_of`: how the runs' states are read (default: from their files alone). `wandb`: also log the table as a
    W&B table, in the W&B project and mode of the table's runs (`pipeline.report.wandb_table`)."""

    table, rows = read_table(table_path, runs_dir, states_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = None
    if table.curve_metrics:  # a curve table, or a value table with its training curves (Table 6's, Fig. 6's)
        splits = [run.run.cfg.data.eval_split for row in rows for run in row.runs]
        title = table.title if table.kind == "curves" else f"{table.title}: training curves"
        figure = plot_curves(title, table.curve_metrics, [(row.label, row.panel, shown_run(row)) for row in rows],
                             out_dir / f"{table_path.stem}.png", eval_split=(splits or ["val"])[0])
    elif table.kind == "responses":
        shown = [(row.label, next((r.responses for r in row.done if r.responses), None)) for row in rows]
        figure = plot_responses(table, shown, out_dir / f"{table_path.stem}.png")
    markdown = out_dir / f"{table_path.stem}.md"
    markdown.write_text(render(table_path, table, rows, figure.name if figure else None, runs_dir))
    if wandb:
        header, cells = table_cells(table, rows)
        log_report_table(table_path.stem, table.title, header, cells, _runs_logging(rows), out_dir)
    return [markdown] + ([figure] if figure else [])


def _runs_logging(rows: list[RowReading]):
    """The W&B settings the table's runs used: the first run's saved config, else its planned one."""
    first = next(r.run for row in rows for r in row.runs)
    saved = RunDir(first.run_dir).config
    return (load_config(saved) if saved.exists() else first.cfg).logging

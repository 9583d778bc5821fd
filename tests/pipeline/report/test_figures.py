"""The curves as the PNG shows them: a row keeps its colour in every panel, the legend covers no curve, and a value
table that names its training curves (Table 6: Fig. 6's) gets them as its figure."""

from __future__ import annotations

from pathlib import Path

from matplotlib.colors import to_hex, to_rgb

from pipeline.report.figures import figure_size
from pipeline.report.write import write_report
from pipeline.run.logger import read_metrics
from pipeline.tables.spec import planned_runs
from tests.support import REPO
from tests.support.figures import pixels_of, png_pixels, saved_figures
from tests.support.report_runs import write_run

CIFAR = REPO / "configs" / "cifar10"
METRICS = ("train_top1_error", "val_top1_error")


def _two_rows(tmp_path: Path) -> Path:
    """Fig. 6's ResNet-20 and ResNet-110, ResNet-110 in two panels (second in one, first in the other, where a
    colour per place in the panel gave it two colours), both finished, ending low at the right."""
    table = tmp_path / "fig6_two.yaml"
    table.write_text("title: Figure 6, two rows\nkind: curves\nmetrics: [train_top1_error, val_top1_error]\nrows:\n"
                     f"  - {{label: ResNet-20, config: {CIFAR / 'resnet20.yaml'}, panel: residual}}\n"
                     f"  - {{label: ResNet-110, config: {CIFAR / 'resnet110.yaml'}, panel: residual}}\n"
                     f"  - {{label: ResNet-110, config: {CIFAR / 'resnet110.yaml'}, panel: deep}}\n")
    for run, error in zip(planned_runs(table, tmp_path), (8.5, 6.5)):
        write_run(run, final_error=error)
    return table


def _row_of(line, logged: dict) -> str:
    """Which row a drawn line is, by the points it goes through."""
    points = [tuple(point) for point in line.get_xydata().tolist()]
    return next(label for label, curves in logged.items() if points in curves)


def test_a_row_has_one_colour_in_every_panel_and_the_legend_covers_no_curve(tmp_path, monkeypatch):
    table = _two_rows(tmp_path)
    logged = {run.label: [[(r["step"], r[metric]) for r in read_metrics(run.run_dir) if metric in r]
                          for metric in METRICS] for run in planned_runs(table, tmp_path)}
    figures = saved_figures(monkeypatch)

    _, png = write_report(table, tmp_path, tmp_path / "report")

    (figure,) = figures
    residual, deep = figure.axes
    colours = {}  # row -> the colours of its lines, over every panel
    for ax in (residual, deep):
        for line in ax.get_lines():
            colours.setdefault(_row_of(line, logged), set()).add(to_hex(line.get_color()))
    assert {row: len(found) for row, found in colours.items()} == {"ResNet-20": 1, "ResNet-110": 1}, colours
    colour = {row: found.pop() for row, found in colours.items()}
    assert colour["ResNet-20"] != colour["ResNet-110"]
    (legend,) = figure.legends
    named = {text.get_text(): to_hex(handle.get_color()) for handle, text in zip(legend.legend_handles,
                                                                                  legend.get_texts())}
    assert {row: named[row] for row in colour} == colour

    # The PNG: each panel shows its rows' colours and no other row's.
    pixels = png_pixels(png)
    rgb = {row: tuple(round(255 * c) for c in to_rgb(hex_colour)) for row, hex_colour in colour.items()}
    for ax, rows in ((residual, ("ResNet-20", "ResNet-110")), (deep, ("ResNet-110",))):
        box = ax.get_window_extent()
        for row in colour:
            found = pixels_of(pixels, rgb[row], box)
            assert found > 200 if row in rows else found == 0, (ax.get_title(), row, found)

    # The legend lies beside the panels, whole inside the figure: it hides no curve and no end point.
    legend_box = legend.get_window_extent()
    for ax in (residual, deep):
        assert not legend_box.overlaps(ax.get_window_extent()), ax.get_title()
    width, height = figure_size("curves", panels=2)
    assert 0 <= legend_box.x0 and legend_box.x1 <= width and 0 <= legend_box.y0 and legend_box.y1 <= height
    for row in colour:  # the legend's own line sample is all there is of a row's colour in its box
        assert 0 < pixels_of(pixels, rgb[row], legend_box) < 200, row


def test_table6_draws_its_runs_training_curves_as_fig6_does(tmp_path, monkeypatch):
    runs = {(r.label, r.seed): r for r in planned_runs(REPO / "configs" / "tables" / "table6.yaml", tmp_path)}
    write_run(runs[("ResNet-20", 0)], final_error=8.1)
    write_run(runs[("ResNet-110", 0)], final_error=6.5)
    write_run(runs[("ResNet-56", 0)], steps=300)  # stopped: its curves so far
    figures = saved_figures(monkeypatch)

    markdown, png = write_report(REPO / "configs" / "tables" / "table6.yaml", tmp_path, tmp_path / "report")

    assert png.name == "table6.png" and "![Table 6: CIFAR-10 test error (%)](table6.png)" in markdown.read_text()
    (figure,) = figures
    (ax,) = figure.axes
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "ResNet-20", "ResNet-32 (no data yet)", "ResNet-44 (no data yet)", "ResNet-56", "ResNet-110",
        "ResNet-1202 (no data yet)", "dashed lines: training error", "bold lines: testing error"]
    # Two curves a row with data (dashed training, bold testing error); the table's values are unchanged.
    assert sorted(line.get_linestyle() for line in ax.get_lines()) == ["-"] * 3 + ["--"] * 3
    assert "| ResNet-20 | 8.75 | 8.10 | -0.65 | 1/1 | done | none |" in markdown.read_text()

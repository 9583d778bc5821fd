"""The report from fixture run directories: paper numbers beside ours, seeds aggregated, states, figures."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.figures import figure_size
from pipeline.report import ReportError, write_report
from pipeline.tables import planned_runs
from tests.report_fixtures import write_run

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "configs" / "tables"


def _runs(table: str, runs_dir: Path) -> dict:
    """(label, seed) -> planned run, for the first panel a label appears in."""
    found = {}
    for run in planned_runs(TABLES / table, runs_dir):
        found.setdefault((run.label, run.seed), run)
    return found


def _row(markdown: str, label: str) -> list:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table6_puts_the_paper_beside_our_seeds(tmp_path):
    runs = _runs("table6.yaml", tmp_path)
    write_run(runs[("ResNet-20", 0)], final_error=8.10)
    for seed, error in zip((0, 1, 2), (6.5, 6.7, 6.9)):
        write_run(runs[("ResNet-110", seed)], final_error=error)
    write_run(runs[("ResNet-110", 3)], steps=500, active=True)  # seed 4: never started
    write_run(runs[("ResNet-56", 0)], steps=300)  # stopped an hour ago, not finished

    markdown = write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "report")[0].read_text()

    assert _row(markdown, "ResNet-20") == ["ResNet-20", "8.75", "8.10", "-0.65", "1/1", "done"]
    mean, std = statistics.fmean([6.5, 6.7, 6.9]), statistics.stdev([6.5, 6.7, 6.9])
    r110 = _row(markdown, "ResNet-110")
    assert r110[:5] == ["ResNet-110", "6.61", f"{mean:.2f} ± {std:.2f}", f"{mean - 6.61:+.2f}", "3/5"]
    assert r110[5] == "done 3, running 1, missing 1"
    assert _row(markdown, "ResNet-56")[2:] == ["–", "–", "0/1", "stopped"]
    assert _row(markdown, "ResNet-1202")[1:] == ["7.93", "–", "–", "0/1", "missing"]
    assert "ResNet-110, seed 3: running: running at step 500 of 1000 (50%)" in markdown
    assert f"ResNet-110, seed 4: missing: no run directory {tmp_path / 'cifar10-resnet110-seed4'}" in markdown


def test_a_ten_crop_table_waits_for_the_ten_crop_evaluation(tmp_path):
    runs = _runs("table3.yaml", tmp_path)
    write_run(runs[("ResNet-50", 0)], final_error=25.0)  # trained: only the centre-crop result
    write_run(runs[("ResNet-152", 0)], final_error=23.0,
              evaluations={"tencrop": {"top1_error": 21.9, "top5_error": 6.0}})

    markdown = write_report(TABLES / "table3.yaml", tmp_path, tmp_path / "report")[0].read_text()

    assert _row(markdown, "ResNet-152") == ["ResNet-152", "21.43", "21.90", "+0.47", "5.71", "6.00", "+0.29",
                                            "1/1", "done"]
    assert _row(markdown, "ResNet-50")[-1] == "not evaluated"
    run_dir = tmp_path / "imagenet-resnet50-seed0"
    assert f"`python -m pipeline.evaluate {run_dir} --protocol tencrop`" in markdown


def test_a_metric_the_run_did_not_record_is_named(tmp_path):
    runs = _runs("table3.yaml", tmp_path)
    write_run(runs[("ResNet-34 B", 0)], evaluations={"tencrop": {"top1_error": 24.0}})  # no top-5
    with pytest.raises(ReportError, match=r"results.json: the tencrop result has no 'top5_error'"):
        write_report(TABLES / "table3.yaml", tmp_path, tmp_path / "report")


def test_the_cli_explains_a_bad_table(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nrows:\n  - {label: X, config: ../nowhere/resnet.yaml}\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", str(bad), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "row 0 (X) names a run config that does not exist: ../nowhere/resnet.yaml" in proc.stderr


def _non_white_fraction(path: Path) -> float:
    pixels = np.asarray(Image.open(path).convert("L"))
    return float((pixels < 250).mean())


def test_fig6_curves_are_drawn_per_panel(tmp_path):
    runs = _runs("fig6.yaml", tmp_path)
    for label, error in (("plain-20", 9.0), ("plain-56", 13.0), ("ResNet-20", 8.5), ("ResNet-110", 6.5)):
        write_run(runs[(label, 0)], final_error=error)
    write_run(runs[("ResNet-1202", 0)], steps=400, active=True)

    markdown_path, png = write_report(TABLES / "fig6.yaml", tmp_path, tmp_path / "report")
    markdown = markdown_path.read_text()

    assert "![Figure 6" in markdown and "(fig6.png)" in markdown
    assert _row(markdown, "plain-56") == ["plain-56", "plain", "11.00", "13.00", "done"]
    assert _row(markdown, "ResNet-1202")[-1] == "running at step 400 of 1000 (40%)"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == figure_size("curves", panels=3)
    assert _non_white_fraction(png) > 0.02  # axes, curves and legends were drawn


def test_fig7_layer_responses_figure(tmp_path):
    runs = _runs("fig7.yaml", tmp_path)
    rng = np.random.default_rng(0)
    write_run(runs[("plain-20", 0)], responses=list(rng.uniform(0.5, 2.0, 19)))
    write_run(runs[("ResNet-20", 0)], responses=list(rng.uniform(0.3, 1.0, 19)))
    write_run(runs[("ResNet-56", 0)])  # trained, responses not measured yet

    markdown_path, png = write_report(TABLES / "fig7.yaml", tmp_path, tmp_path / "report")
    markdown = markdown_path.read_text()

    assert _row(markdown, "plain-20")[1] == "19" and _row(markdown, "plain-56")[-1] == "missing"
    assert _row(markdown, "ResNet-56")[-1] == "not evaluated"
    assert f"python -m pipeline.evaluate {tmp_path / 'cifar10-resnet56-seed0'} --layer-responses" in markdown
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == figure_size("responses")
    assert _non_white_fraction(png) > 0.02

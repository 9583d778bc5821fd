"""The report from fixture run directories: paper numbers beside ours in the paper's form (best (mean ± std)
over several runs), states, departures from the paper's recipe, figures."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.report.figures import figure_size
from pipeline.report.reading import ReportError
from pipeline.report.write import write_report
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics
from pipeline.run.state import read_run_state
from pipeline.tables.spec import PlannedRun, planned_runs
from tests.support import REPO
from tests.support.figures import pixels_of, png_pixels, saved_figures
from tests.support.report_runs import write_run
from tests.support.slurm import require_minicluster

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
    # The trained nets as W&B logged them: one run online (its artifact's URL), one offline (its name to sync).
    url = "https://wandb.example/team/resnet-repro/artifacts/model/model-cifar10-resnet20-seed0/step-1000"
    online = {"model_artifact": "model-cifar10-resnet20-seed0:step-1000", "model_url": url,
              "model_export": str(tmp_path / "cifar10-resnet20-seed0" / "export" / "step-000001000")}
    offline = {"model_artifact": "model-cifar10-resnet110-seed0:step-1000",
               "model_export": str(tmp_path / "cifar10-resnet110-seed0" / "export" / "step-000001000")}
    write_run(runs[("ResNet-20", 0)], final_error=8.10, model=online)
    for seed, error in zip((0, 1, 2), (6.5, 6.7, 6.9)):
        write_run(runs[("ResNet-110", seed)], final_error=error, model=offline if seed == 0 else None)
    write_run(runs[("ResNet-110", 3)], steps=500, active=True)  # seed 4: never started
    write_run(runs[("ResNet-56", 0)], steps=300)  # stopped an hour ago, not finished

    markdown = write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "report")[0].read_text()

    assert _row(markdown, "ResNet-20") == ["ResNet-20", "8.75", "8.10", "-0.65", "1/1", "done", "none"]
    mean, std = statistics.fmean([6.5, 6.7, 6.9]), statistics.stdev([6.5, 6.7, 6.9])
    r110 = _row(markdown, "ResNet-110")
    # The paper's form on both sides: best (mean ± std); the difference compares the means.
    assert r110[:5] == ["ResNet-110", "6.43 (6.61 ± 0.16)", f"6.50 ({mean:.2f} ± {std:.2f})",
                        f"{mean - 6.61:+.2f}", "3/5"]
    assert r110[5:] == ["done 3, running 1, missing 1", "none"]
    assert _row(markdown, "ResNet-56")[2:] == ["–", "–", "0/1", "stopped", "none"]
    assert _row(markdown, "ResNet-1202")[1:] == ["7.93", "–", "–", "0/1", "missing", "none"]
    assert "ResNet-110, seed 3: running at step 500 of 1000 (50%)" in markdown
    assert f"ResNet-110, seed 4: missing: no run directory {tmp_path / 'cifar10-resnet110-seed4'}" in markdown
    models = markdown.split("## Trained models\n\n")[1].split("\n\n")[0].splitlines()
    assert models == [
        f"- ResNet-20, seed 0: [{online['model_artifact']}]({url}), exported to `{online['model_export']}`",
        f"- ResNet-110, seed 0: `{offline['model_artifact']}` (W&B offline: `wandb sync` uploads it), exported to "
        f"`{offline['model_export']}`"]


def test_a_ten_crop_table_waits_for_the_ten_crop_evaluation(tmp_path):
    runs = _runs("table3.yaml", tmp_path)
    write_run(runs[("ResNet-50", 0)], final_error=25.0)  # trained: only the centre-crop result
    write_run(runs[("ResNet-152", 0)], final_error=23.0,
              evaluations={"tencrop": {"top1_error": 21.9, "top5_error": 6.0}})

    markdown = write_report(TABLES / "table3.yaml", tmp_path, tmp_path / "report")[0].read_text()

    assert _row(markdown, "ResNet-152") == ["ResNet-152", "21.43", "21.90", "+0.47", "5.71", "6.00", "+0.29",
                                            "1/1", "done", "none"]
    assert _row(markdown, "ResNet-50")[-2] == "not evaluated"
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


def _logged(run_dir: Path, metric: str) -> list:
    return [(record["step"], record[metric]) for record in read_metrics(run_dir) if metric in record]


def _curves_by_legend_entry(figure, ax) -> dict:
    """The figure's legend entries, each with the lines drawn in its colour in the panel `ax` as (style, points)."""
    from matplotlib.colors import to_hex

    (legend,) = figure.legends
    colours = {text.get_text(): to_hex(handle.get_color())
               for handle, text in zip(legend.legend_handles, legend.get_texts())}
    return {entry: sorted((line.get_linestyle(), [tuple(point) for point in line.get_xydata().tolist()])
                          for line in ax.get_lines() if to_hex(line.get_color()) == colour)
            for entry, colour in colours.items()}


def test_fig6_curves_are_drawn_per_panel(tmp_path, monkeypatch):
    runs = _runs("fig6.yaml", tmp_path)
    for label, error in (("plain-20", 9.0), ("plain-56", 13.0), ("ResNet-20", 8.5), ("ResNet-110", 6.5)):
        write_run(runs[(label, 0)], final_error=error)
    write_run(runs[("ResNet-1202", 0)], steps=400, active=True)
    figures = saved_figures(monkeypatch)

    markdown_path, png = write_report(TABLES / "fig6.yaml", tmp_path, tmp_path / "report")
    markdown = markdown_path.read_text()

    assert "![Figure 6" in markdown and "(fig6.png)" in markdown
    assert _row(markdown, "plain-56") == ["plain-56", "plain", "11.00", "13.00", "done", "none"]
    assert _row(markdown, "ResNet-1202")[-2:] == ["running at step 400 of 1000 (40%)", "none"]
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == figure_size("curves", panels=3)

    # Each row with a run: its training error dashed and its testing error solid, in its own colour, through every
    # point its run logged (the running ResNet-1202's up to step 400), in the panels that show it; each row without
    # one: no line, and its legend entry says so. The legend names each row once, then the two line styles in Fig.
    # 6's caption's words, with no line of their own.
    def drawn(label: str) -> list:
        run_dir = runs[(label, 0)].run_dir
        return sorted([("--", _logged(run_dir, "train_top1_error")), ("-", _logged(run_dir, "val_top1_error"))])

    assert [len(points) for _, points in drawn("ResNet-1202")] == [4, 8]  # val at 100..400, train at 50..400
    entries = ["plain-20", "plain-32 (no data yet)", "plain-44 (no data yet)", "plain-56", "ResNet-20",
               "ResNet-32 (no data yet)", "ResNet-44 (no data yet)", "ResNet-56 (no data yet)", "ResNet-110",
               "ResNet-1202", "dashed lines: training error", "bold lines: testing error"]
    shown = {"plain": ("plain-20", "plain-56"), "residual": ("ResNet-20", "ResNet-110"),
             "deep": ("ResNet-110", "ResNet-1202")}
    (figure,) = figures
    assert [ax.get_title() for ax in figure.axes] == list(shown)
    for ax in figure.axes:
        expected = {entry: drawn(entry) if entry in shown[ax.get_title()] else [] for entry in entries}
        assert _curves_by_legend_entry(figure, ax) == expected, ax.get_title()


def test_fig7_layer_responses_figure(tmp_path, monkeypatch):
    runs = _runs("fig7.yaml", tmp_path)
    rng = np.random.default_rng(0)
    responses = {"plain-20": rng.uniform(0.5, 2.0, 19).tolist(), "ResNet-20": rng.uniform(0.3, 1.0, 19).tolist()}
    for label, stds in responses.items():
        write_run(runs[(label, 0)], responses=stds)
    write_run(runs[("ResNet-56", 0)])  # trained, responses not measured yet
    figures = saved_figures(monkeypatch)

    markdown_path, png = write_report(TABLES / "fig7.yaml", tmp_path, tmp_path / "report")
    markdown = markdown_path.read_text()

    assert _row(markdown, "plain-20")[1] == "19" and _row(markdown, "plain-56")[-2:] == ["missing", "none"]
    assert _row(markdown, "ResNet-56")[-2] == "not evaluated"
    assert f"python -m pipeline.evaluate {tmp_path / 'cifar10-resnet56-seed0'} --layer-responses" in markdown
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == figure_size("responses")

    # Top: each measured row's stds in layer order (layers 1 to 19); a row without them is an empty line named so.
    (figure,) = figures
    by_layer, by_size = figure.axes
    assert {line.get_label(): line.get_xydata().tolist() for line in by_layer.get_lines()} == {
        "plain-20": [[layer, std] for layer, std in enumerate(responses["plain-20"], start=1)],
        "plain-56 (no data yet)": [],
        "ResNet-20": [[layer, std] for layer, std in enumerate(responses["ResNet-20"], start=1)],
        "ResNet-56 (no data yet)": [], "ResNet-110 (no data yet)": []}
    # Bottom: the same rows in the same colours, each row's stds sorted in descending order.
    assert len(by_size.get_lines()) == len(by_layer.get_lines())
    for top, bottom in zip(by_layer.get_lines(), by_size.get_lines()):
        assert bottom.get_color() == top.get_color(), top.get_label()
        assert bottom.get_ydata().tolist() == sorted(top.get_ydata().tolist(), reverse=True), top.get_label()


def test_the_cli_shows_table6_in_the_papers_form(tmp_path):
    """`python -m pipeline.report configs/tables/table6.yaml`: best of 5 and mean ± std, paper and ours alike."""
    runs = _runs("table6.yaml", tmp_path)
    errors = (6.52, 6.40, 6.75, 6.61, 6.83)
    for seed, error in enumerate(errors):
        write_run(runs[("ResNet-110", seed)], final_error=error)
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", "configs/tables/table6.yaml", "--runs",
                           str(tmp_path), "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    mean, std = statistics.fmean(errors), statistics.stdev(errors)
    assert _row(proc.stdout, "ResNet-110")[1:5] == ["6.43 (6.61 ± 0.16)", f"6.40 ({mean:.2f} ± {std:.2f})",
                                                    f"{mean - 6.61:+.2f}", "5/5"]


def test_the_best_run_gives_every_metric_of_a_best_row(tmp_path):
    """Best of n is one model: its top-5 is the top-5 of the run best on top-1, not the lowest top-5."""
    table = tmp_path / "t3.yaml"
    table.write_text("title: t\nmetrics: [top1_error, top5_error]\nprotocol: tencrop\nseeds: [0, 1]\nrows:\n"
                     f"  - {{label: ResNet-50, config: {REPO}/configs/imagenet/resnet50.yaml}}\n")
    first, second = planned_runs(table, tmp_path)
    write_run(first, evaluations={"tencrop": {"top1_error": 23.0, "top5_error": 6.5}})
    write_run(second, evaluations={"tencrop": {"top1_error": 23.4, "top5_error": 6.3}})
    markdown = write_report(table, tmp_path, tmp_path / "report")[0].read_text()
    row = _row(markdown, "ResNet-50")
    assert row[2].startswith("23.00 (23.20 ± ") and row[5].startswith("6.50 (6.40 ± ")


def test_a_run_with_overridden_recipe_keys_lists_each_departure(tmp_path):
    """A sweep submitted with recipe overrides writes them into the run's config.yaml; the row lists them."""
    overrides = ("data.batch_size=8192", "optim.lr=0.2", "engine.precision=fp16", "data.normalize=per_channel",
                 "schedule.warmup=linear", "schedule.warmup_iterations=780", "data.root=/fast/imagenet")
    swept = {r.label: r for r in planned_runs(TABLES / "table3.yaml", tmp_path, extra_overrides=overrides)}
    write_run(swept["ResNet-50"], evaluations={"tencrop": {"top1_error": 23.5, "top5_error": 6.9}})
    write_run(swept["ResNet-101"], steps=200)  # stopped: its departures show all the same
    paper = {r.label: r for r in planned_runs(TABLES / "table3.yaml", tmp_path)}
    write_run(paper["ResNet-152"], evaluations={"tencrop": {"top1_error": 21.9, "top5_error": 6.0}})

    markdown = write_report(TABLES / "table3.yaml", tmp_path, tmp_path / "report")[0].read_text()

    departures = _row(markdown, "ResNet-50")[-1].split("; ")
    assert departures == ["data.batch_size: 256 → 8192", "data.normalize: per_pixel_mean → per_channel",
                          "optim.lr: 0.1 → 0.2", "schedule.warmup: none → linear",
                          "schedule.warmup_iterations: 0 → 780", "engine.precision: bf16 → fp16",
                          "peak lr: 0.1 → 6.4"]  # 0.2 x 8192 / 256 by the linear scaling rule
    assert _row(markdown, "ResNet-101")[-1] == _row(markdown, "ResNet-50")[-1]
    assert _row(markdown, "ResNet-152")[-1] == "none" and _row(markdown, "ResNet-34 C")[-1] == "none"
    assert "departures from the paper's recipe" in markdown


def test_seeds_that_depart_differently_are_told_apart(tmp_path):
    runs = _runs("table6.yaml", tmp_path)
    write_run(runs[("ResNet-110", 0)], final_error=6.5)
    fp16 = runs[("ResNet-110", 1)]
    write_run(PlannedRun(fp16.row, fp16.label, 1, fp16.config_path, fp16.overrides,
                         load_config(fp16.config_path, [*fp16.overrides, "engine.precision=fp16"]), fp16.paper_cfg),
              final_error=6.6)
    markdown = write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "report")[0].read_text()
    assert _row(markdown, "ResNet-110")[-1] == ("seed 0: none / seed 1: engine.precision: fp32 → fp16 / "
                                                "seed 2: none / seed 3: none / seed 4: none")


def test_the_large_batch_table_reports_its_departures_before_and_after_training(tmp_path):
    runs = {r.label: r for r in planned_runs(TABLES / "table3_large_batch.yaml", tmp_path)}
    write_run(runs["ResNet-50"], evaluations={"tencrop": {"top1_error": 23.6, "top5_error": 6.9}})
    markdown = write_report(TABLES / "table3_large_batch.yaml", tmp_path, tmp_path / "report")[0].read_text()
    expected = ("model.zero_init_residual: False → True; data.batch_size: 256 → 8192; "
                "schedule.warmup: none → linear; schedule.warmup_iterations: 0 → 780; "
                "schedule.warmup_lr: 0.01 → 0.1; peak lr: 0.1 → 3.2")
    assert _row(markdown, "ResNet-50")[1:4] == ["22.85", "23.60", "+0.75"]
    assert _row(markdown, "ResNet-50")[-1] == expected
    assert _row(markdown, "ResNet-152")[-2:] == ["missing", expected]  # planned: the same departures


def test_a_run_config_that_does_not_load_is_named(tmp_path):
    runs = _runs("table6.yaml", tmp_path)
    write_run(runs[("ResNet-20", 0)])
    (runs[("ResNet-20", 0)].run_dir / "config.yaml").write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ReportError, match=r"config.yaml: the run's config does not load: .*optim.lrr"):
        write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "report")


@pytest.mark.slurm
def test_a_submitted_run_is_told_from_its_files_and_the_queue_from_launch(tmp_path):
    """The report reads files only: a run with a SLURM job id is "submitted" (queued, running or failed, the
    files cannot tell); a caller that asks SLURM passes its own `states_of`."""
    require_minicluster()  # SLURM's own answer for a job it does not know
    from launch.submit.run_status import run_statuses

    runs = _runs("table6.yaml", tmp_path)
    write_run(runs[("ResNet-20", 0)], steps=500, active=True)
    RunDir(runs[("ResNet-20", 0)].run_dir).slurm_job_id.write_text("999999999")

    markdown = write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "report")[0].read_text()
    assert _row(markdown, "ResNet-20")[-2:] == ["submitted", "none"]
    assert "- ResNet-20, seed 0: submitted: SLURM job 999999999, at step 500 of 1000 (50%)" in markdown
    assert f"`python -m launch status {TABLES / 'table6.yaml'} --runs {tmp_path}`" in markdown

    asked = write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "asked", states_of=run_statuses)[0].read_text()
    assert _row(asked, "ResNet-20")[-2] == "failed"  # no queue knows the job: it left without finishing


def test_a_cancelled_run_is_cancelled_in_the_report_with_the_step_it_resumes_from(tmp_path):
    """What SLURM said of a job that left the queue (`launch.submit.run_status`, passed as `states_of`) is the row's
    state; progress is the steps saved, not those logged, and the hint says how to go on."""
    runs = _runs("table6.yaml", tmp_path)
    write_run(runs[("ResNet-20", 0)], steps=500)
    saved = {"ResNet-20": 300}

    def states_of(run_dirs):
        states = [read_run_state(run_dir) for run_dir in run_dirs]
        for state in states:
            if state.run_dir == runs[("ResNet-20", 0)].run_dir:
                state.state, state.step, state.job_id = "cancelled", saved["ResNet-20"], "41"
        return states

    markdown = write_report(TABLES / "table6.yaml", tmp_path, tmp_path / "report", states_of=states_of)[0].read_text()
    assert _row(markdown, "ResNet-20")[-2] == "cancelled"
    assert "- ResNet-20, seed 0: cancelled, saved up to step 300 of 1000 (30%), job 41" in markdown, markdown
    assert "what is missing, failed, cancelled or stopped" in markdown


def test_the_report_does_not_import_its_launcher(tmp_path):
    """The library never imports `launch`: not at import, nor while it reads runs and writes a report."""
    runs = _runs("table6.yaml", tmp_path)
    write_run(runs[("ResNet-20", 0)], final_error=8.1)
    write_run(runs[("ResNet-56", 0)], steps=300)
    code = ("import sys\nfrom pipeline.report.__main__ import main\n"
            f"assert main([{str(TABLES / 'table6.yaml')!r}, '--runs', {str(tmp_path)!r}, "
            f"'--out', {str(tmp_path / 'r')!r}]) == 0\n"
            "print(sorted(m for m in sys.modules if m == 'launch' or m.startswith('launch.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_curves_of_two_points_are_drawn_with_markers_and_an_empty_panel_says_no_data_yet(tmp_path, monkeypatch):
    import pipeline.report.figures as figures

    two = SimpleNamespace(curves={"train_top1_error": [(100, 80.0), (200, 60.0)],
                                  "val_top1_error": [(100, 70.0), (200, 50.0)]})
    one = SimpleNamespace(curves={"val_top1_error": [(200, 55.0)]})
    blue, orange = (31, 119, 180), (255, 127, 14)  # matplotlib's first two colours

    def draw(name: str, right) -> Path:
        rows = [("ResNet-20", "left", two), ("ResNet-32", "left", one), ("ResNet-1202", "right", right)]
        return figures.plot_curves("Figure 6", ["train_top1_error", "val_top1_error"], rows, tmp_path / name,
                                   eval_split="test")

    drawn = saved_figures(monkeypatch)
    with_markers = draw("markers.png", None)
    monkeypatch.setattr(figures, "FEW_POINTS", 0)  # the same figure as before markers
    plain = draw("plain.png", None)
    # Two points a curve: each point's marker adds to its line; one point alone is nothing but its marker.
    assert pixels_of(png_pixels(with_markers), blue) > pixels_of(png_pixels(plain), blue) + 40
    assert pixels_of(png_pixels(with_markers), orange) > pixels_of(png_pixels(plain), orange) + 10
    # The right panel has no curve: it says so, in grey, in its middle (where nothing else is drawn).
    pixels = png_pixels(with_markers)
    right = drawn[0].axes[1].get_window_extent()
    top, left = pixels.shape[0] - (right.y0 + 0.55 * right.height), right.x0 + 0.37 * right.width
    middle = pixels[int(top):int(top + 0.1 * right.height), int(left):int(left + 0.26 * right.width)]
    greys = (middle.max(axis=2) - middle.min(axis=2) < 8) & (middle.mean(axis=2) < 200)
    assert greys.sum() > 30, greys.sum()

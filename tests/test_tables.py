"""Table configs: every paper table and figure loads, names real run configs, and bad ones are refused."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.tables import load_table, planned_runs, unique_runs

TABLES = Path(__file__).resolve().parents[1] / "configs" / "tables"


@pytest.mark.parametrize("name", ["table2", "table3", "table4", "table6", "fig4", "fig6", "fig7"])
def test_every_paper_table_loads(name):
    table = load_table(TABLES / f"{name}.yaml")
    assert table.rows and table.title


def test_table6_carries_the_paper_numbers_and_five_seeds_for_110():
    table = load_table(TABLES / "table6.yaml")
    paper = {row.label: row.paper["top1_error"] for row in table.rows}
    assert paper == {"ResNet-20": 8.75, "ResNet-32": 7.51, "ResNet-44": 7.17, "ResNet-56": 6.97,
                     "ResNet-110": 6.61, "ResNet-1202": 7.93}
    runs = planned_runs(TABLES / "table6.yaml", runs_dir="/scratch/runs")
    r110 = [r for r in runs if r.label == "ResNet-110"]
    assert [r.seed for r in r110] == [0, 1, 2, 3, 4]
    assert r110[3].run_dir == Path("/scratch/runs/cifar10-resnet110-seed3") and r110[3].cfg.run.seed == 3


def test_figure_rows_sharing_a_config_share_the_run():
    runs = planned_runs(TABLES / "fig6.yaml")
    assert len(runs) == 11 and len(unique_runs(runs)) == 10  # ResNet-110 appears in two panels


def test_missing_run_config_is_named(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("title: t\nrows:\n  - {label: X, config: nowhere.yaml}\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_table(bad)


def test_unrecorded_metric_is_named(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text(f"title: t\nmetrics: [top3_error]\nrows:\n  - {{label: X, config: {TABLES}/../cifar10/resnet20.yaml}}\n")
    with pytest.raises(ConfigError, match="top3_error"):
        load_table(bad)

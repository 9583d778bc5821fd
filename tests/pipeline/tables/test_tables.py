"""Table configs: every paper table and figure loads, names real run configs, and bad ones are refused;
one model in two tables is one run; a row's departures from the paper's recipe are listed."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, config_to_dict, load_config
from pipeline.tables.spec import load_table, planned_runs, recipe_departures, unique_runs
from tests.support import REPO

TABLES = REPO / "configs" / "tables"


@pytest.mark.parametrize("name", ["table2", "table3", "table4", "table6", "fig4", "fig6", "fig7"])
def test_every_paper_table_loads(name):
    table = load_table(TABLES / f"{name}.yaml")
    assert table.rows and table.title


@pytest.mark.parametrize("path", sorted(TABLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_table_file_plans_its_runs(path):
    """Every table in configs/tables (the paper's and the large-batch one) loads and its configs resolve."""
    runs = planned_runs(path)
    assert runs and all(run.paper_cfg is not None for run in runs)


def test_table6_carries_the_paper_numbers_and_five_seeds_for_110():
    table = load_table(TABLES / "table6.yaml")
    paper = {row.label: row.paper["top1_error"] for row in table.rows}
    assert paper == {"ResNet-20": 8.75, "ResNet-32": 7.51, "ResNet-44": 7.17, "ResNet-56": 6.97,
                     "ResNet-110": 6.43, "ResNet-1202": 7.93}  # 110: the best of 5, as the paper shows it
    spread = {row.label: row.paper_spread for row in table.rows if row.paper_spread}
    assert list(spread) == ["ResNet-110"]
    assert (spread["ResNet-110"]["top1_error"].mean, spread["ResNet-110"]["top1_error"].std,
            spread["ResNet-110"]["top1_error"].runs) == (6.61, 0.16, 5)
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
    bad.write_text(f"title: t\nmetrics: [top3_error]\nrows:\n"
                   f"  - {{label: X, config: {TABLES}/../cifar10/resnet20.yaml}}\n")
    with pytest.raises(ConfigError, match="top3_error"):
        load_table(bad)


def test_table2_resnet34_and_table3_resnet34_a_are_one_run(tmp_path):
    """The paper's 25.03 is one model: both rows plan the same run directory with the same config."""
    table2 = {r.label: r for r in planned_runs(TABLES / "table2.yaml", tmp_path)}
    table3 = {r.label: r for r in planned_runs(TABLES / "table3.yaml", tmp_path)}
    r34, r34a = table2["ResNet-34"], table3["ResNet-34 A"]
    assert r34.run_dir == r34a.run_dir == tmp_path / "imagenet-resnet34-seed0"
    # One config but for its W&B labels: each table groups its runs under its own name.
    assert (r34.cfg.logging.wandb_group, r34a.cfg.logging.wandb_group) == ("table2", "table3")
    assert r34.cfg.logging.wandb_tags == ["table2", "row:ResNet-34", "seed:0"]
    unlabelled = [config_to_dict(run.cfg) for run in (r34, r34a)]
    for cfg in unlabelled:
        del cfg["logging"]["wandb_group"], cfg["logging"]["wandb_tags"]
    assert unlabelled[0] == unlabelled[1]
    assert len(unique_runs([*table2.values(), *table3.values()])) == 4 + 7 - 2  # plain-34 and ResNet-34 shared
    # The old per-table file is an alias: the same config, the same run name.
    alias = load_config(REPO / "configs/imagenet/resnet34_a.yaml")
    assert config_to_dict(alias) == config_to_dict(load_config(REPO / "configs/imagenet/resnet34.yaml"))
    assert alias.model.shortcut == "A"


def test_no_two_paper_rows_train_one_recipe_twice():
    """Across every table, runs with the same recipe and seed share a run directory: nothing is trained twice."""
    by_recipe = {}
    for path in sorted(TABLES.glob("*.yaml")):
        for run in planned_runs(path):
            recipe = config_to_dict(run.cfg)
            recipe["run"].pop("name")
            by_recipe.setdefault(repr(recipe), set()).add(run.run_dir)
    shared = {key: dirs for key, dirs in by_recipe.items() if len(dirs) > 1}
    assert not shared, f"one recipe, several run directories: {list(shared.values())}"


def test_large_batch_rows_list_their_departures_from_the_paper():
    """The large-batch preset: batch 8192, peak lr 3.2 by the scaling rule, 5-epoch linear warm-up, zero-init BN."""
    run = next(r for r in planned_runs(TABLES / "table3_large_batch.yaml") if r.label == "ResNet-50")
    cfg = run.cfg
    assert (cfg.data.batch_size, cfg.optim.lr) == (8192, 0.1)
    assert (cfg.schedule.scale_lr, cfg.schedule.base_batch_size) == (True, 256)
    assert (cfg.schedule.warmup, cfg.schedule.warmup_lr, cfg.schedule.warmup_iterations) == ("linear", 0.1, 780)
    assert cfg.model.zero_init_residual and (cfg.model.name, cfg.model.shortcut) == ("resnet50", "B")
    assert run.run_dir.name == "imagenet-resnet50-bs8192-seed0"
    assert sorted(recipe_departures(run.paper_cfg, cfg)) == sorted([
        "data.batch_size: 256 → 8192", "peak lr: 0.1 → 3.2", "schedule.warmup: none → linear",
        "schedule.warmup_iterations: 0 → 780", "schedule.warmup_lr: 0.01 → 0.1",
        "model.zero_init_residual: False → True"])


def test_where_and_how_fast_a_run_goes_is_no_departure():
    paper = load_config(REPO / "configs/imagenet/resnet50.yaml")
    moved = load_config(REPO / "configs/imagenet/resnet50.yaml",
                        ["run.name=x", "run.out_dir=/scratch", "run.seed=3", "data.root=/fast/imagenet",
                         "data.backend=torch", "data.num_threads=16", "engine.name=deepspeed", "engine.zero_stage=1",
                         "engine.compile=true", "slurm.nodes=4", "checkpoint.every_minutes=10",
                         "logging.wandb_mode=disabled", "eval.every_epochs=5"])
    assert recipe_departures(paper, moved) == []
    changed = load_config(REPO / "configs/imagenet/resnet50.yaml",
                          ["engine.precision=fp16", "engine.sync_bn=true", "optim.lr=0.2", "data.pca_lighting=0"])
    assert recipe_departures(paper, changed) == [
        "data.pca_lighting: 0.1 → 0", "optim.lr: 0.1 → 0.2", "engine.precision: bf16 → fp16",
        "engine.sync_bn: False → True", "peak lr: 0.1 → 0.2"]


def test_a_spread_without_its_paper_value_is_refused(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text(f"title: t\nrows:\n  - {{label: X, config: {TABLES}/../cifar10/resnet20.yaml, "
                   "paper_spread: {top1_error: {mean: 6.6, std: 0.2, runs: 5}}}\n")
    with pytest.raises(ConfigError, match="paper_spread without the paper value"):
        load_table(bad)


def test_a_value_tables_curves_are_its_figure_and_bad_ones_are_refused(tmp_path):
    """Table 6 and Table 2 draw their runs' training curves (Figs. 6 and 4); other value tables draw none."""
    assert load_table(TABLES / "table6.yaml").curve_metrics == ["train_top1_error", "val_top1_error"]
    assert load_table(TABLES / "table2.yaml").curve_metrics == ["train_top1_error", "val_top1_error"]
    assert load_table(TABLES / "table3.yaml").curve_metrics == []
    assert load_table(TABLES / "fig6.yaml").curve_metrics == ["train_top1_error", "val_top1_error"]
    assert load_table(TABLES / "fig7.yaml").curve_metrics == []
    rows = f"rows:\n  - {{label: X, config: {REPO / 'configs/cifar10/resnet20.yaml'}}}\n"
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"title: t\ncurves: [train_top1_error, val_top3_error]\n{rows}")
    with pytest.raises(ConfigError, match="curve 'val_top3_error' is not recorded"):
        load_table(unknown)
    responses = tmp_path / "responses.yaml"
    responses.write_text(f"title: t\nkind: responses\nmetrics: [layer_response_std]\ncurves: [loss]\n{rows}")
    with pytest.raises(ConfigError, match="curves are a value table's figure; a responses table draws its metrics"):
        load_table(responses)

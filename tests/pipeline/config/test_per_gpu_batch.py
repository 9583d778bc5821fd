"""One recipe at any scale: what each GPU gets of the batch is said (and warned about below the recipe's) by
`launch submit`, `launch reproduce`, `launch plan` and the report; ghost BN keeps the paper's BN batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, load_config
from pipeline.config.per_gpu_batch import check_bn_groups, gpu_share
from pipeline.models import build_model
from pipeline.models.ghost_bn import GhostBatchNorm2d, use_ghost_batchnorm
from pipeline.report.write import write_report
from pipeline.tables.spec import planned_runs, recipe_departures
from tests.support import REPO
from tests.support.commands import launch
from tests.support.report_runs import write_run

RESNET50 = str(REPO / "configs/imagenet/resnet50.yaml")
LARGE_BATCH_50 = str(REPO / "configs/imagenet/large_batch/resnet50.yaml")
OLD_README_EXAMPLE = ["--nodes", "4", "--gpus-per-node", "8"]  # the paper's 256 images over 32 GPUs
ONE_NODE = ["--nodes", "1", "--gpus-per-node", "8"]


# --- ghost BN --------------------------------------------------------------------------------------------

def test_ghost_bn_in_groups_of_32_is_8_separate_bn_passes():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(5)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    ghost = use_ghost_batchnorm(nn.Sequential(nn.BatchNorm2d(5)), 32)[0]
    ghost.load_state_dict(plain.state_dict())
    assert isinstance(ghost, GhostBatchNorm2d) and list(ghost.state_dict()) == list(plain.state_dict())
    x = torch.randn(256, 5, 6, 6) * 3 + torch.arange(256.0).view(256, 1, 1, 1) / 64  # groups of different means

    separate = torch.cat([plain(group) for group in x.split(32)])  # 8 batches of 32, one after the other
    grouped = ghost(x)

    assert torch.allclose(grouped, separate, atol=1e-6)
    for name, a in plain.state_dict().items():  # running mean and variance, and a count of 8 batches
        assert torch.allclose(ghost.state_dict()[name].float(), a.float(), atol=1e-6), name
    assert int(ghost.num_batches_tracked) == 8
    # Not the statistics of the whole batch: the groups' means differ.
    assert not torch.allclose(grouped, nn.BatchNorm2d(5).train()(x), atol=1e-3)
    # Evaluation uses the running statistics, as BatchNorm2d does.
    plain.eval(), ghost.eval()
    assert torch.equal(ghost(x), plain(x))


def test_a_config_with_bn_groups_builds_ghost_bn_with_the_same_parameter_names():
    cfg = load_config(RESNET50, ["model.name=resnet18"])
    assert cfg.model.bn_group_size == 32  # the paper's BN batch, in the ImageNet recipe
    net = build_model(cfg.model)
    kinds = {type(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    assert kinds == {GhostBatchNorm2d}
    plain = build_model(load_config(RESNET50, ["model.name=resnet18", "model.bn_group_size=0"]).model)
    assert list(net.state_dict()) == list(plain.state_dict())


def test_bn_groups_that_cannot_be_meant_are_refused():
    with pytest.raises(ConfigError, match=r"model.bn_group_size \(32\) does not divide the 48 images per GPU"):
        check_bn_groups(load_config(RESNET50, ["data.batch_size=96"]), 2)
    with pytest.raises(ConfigError, match="engine.sync_bn=true"):
        check_bn_groups(load_config(RESNET50, ["engine.sync_bn=true"]), 2)
    check_bn_groups(load_config(RESNET50, ["data.batch_size=96"]), 4)  # 24 a GPU: BN over the 24


# --- the share of each GPU --------------------------------------------------------------------------------

def test_the_paper_batch_over_32_gpus_is_below_its_recipe_and_over_8_is_not():
    cfg = load_config(RESNET50)
    thin, paper, one = gpu_share(cfg, 32), gpu_share(cfg, 8), gpu_share(cfg, 1)
    assert (thin.images, thin.bn_batch) == (8, 8) and "8 images per GPU" in thin.below_recipe()
    assert (paper.images, paper.bn_batch, paper.below_recipe()) == (32, 32, None)
    assert (one.images, one.bn_batch, one.below_recipe()) == (256, 32, None)  # ghost BN: groups of 32
    large = gpu_share(load_config(LARGE_BATCH_50), 32)  # its own 4 nodes x 8
    assert (large.images, large.bn_batch, large.below_recipe()) == (256, 32, None)
    assert large.describe() == "256 images per GPU (8192 over 32), BN statistics over groups of 32"


def test_submit_dry_run_warns_for_the_old_4_node_example_and_not_for_one_node(tmp_path):
    thin = launch("submit", RESNET50, f"run.out_dir={tmp_path}", *OLD_README_EXAMPLE, "--dry-run")
    assert thin.returncode == 0, thin.stderr
    assert "per GPU: 8 images per GPU (256 over 32)" in thin.stderr
    warning = next(line for line in thin.stderr.splitlines() if line.startswith("warning:"))
    assert "8 images per GPU, below the 32 the recipe was made for" in warning
    assert "8 GPUs per run" in warning and "--array-parallelism" in warning and "large_batch" in warning
    assert thin.stdout.startswith("# run directory")  # stdout stays the script

    node = launch("submit", RESNET50, f"run.out_dir={tmp_path}", *ONE_NODE, "--dry-run")
    assert node.returncode == 0 and "per GPU: 32 images per GPU (256 over 8)" in node.stderr
    assert "warning" not in node.stderr


def test_reproduce_dry_run_warns_once_for_every_run_spread_too_thin(tmp_path):
    thin = launch("reproduce", "configs/tables/table2.yaml", "--runs", str(tmp_path), *OLD_README_EXAMPLE,
                  "--dry-run")
    assert thin.returncode == 0, thin.stderr
    warnings = [line for line in thin.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 4 runs (plain-18, seed 0, "), warnings
    assert "per GPU: 8 images per GPU (256 over 32) (4 runs)" in thin.stderr
    node = launch("reproduce", "configs/tables/table2.yaml", "--runs", str(tmp_path), *ONE_NODE, "--dry-run")
    assert node.returncode == 0 and "warning" not in node.stderr, node.stderr
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_a_cpu_job_is_told_of_processes_and_a_centre_view_table_of_no_evaluation_jobs(tmp_path):
    """Table 6 is read from training's own final evaluation: it has no evaluation jobs to speak of."""
    cpu = launch("reproduce", "configs/tables/table6.yaml", "--runs", str(tmp_path), "--gpus-per-node", "0",
                 "--dry-run")
    assert cpu.returncode == 0, cpu.stderr
    assert "per process: 128 images per process (128 over 1)" in cpu.stderr and "GPU" not in cpu.stderr
    assert "each training job: 1 node(s) x 1 task(s), no GPUs (CPU only)," in cpu.stdout
    assert "evaluat" not in cpu.stdout, cpu.stdout
    below = gpu_share(load_config(RESNET50), 32, on_gpus=False).below_recipe()
    assert below.startswith("data.batch_size 256 over 32 processes is 8 images per process,") and "GPU" not in below


def test_plan_shows_images_per_gpu_and_warns_below_the_recipe():
    """(At each config's own resources, tests/launch/plan/test_plan.py finds no such note.)"""
    thin = launch("plan", "configs/tables/table2.yaml", *OLD_README_EXAMPLE)
    assert thin.returncode == 0, thin.stderr
    header = next(line for line in thin.stdout.splitlines() if line.startswith("row "))
    assert header.split()[:5] == ["row", "model", "runs", "GPUs", "img/GPU"]
    assert "ResNet-34: data.batch_size 256 over 32 GPUs is 8 images per GPU" in " ".join(thin.stdout.split())


# --- the report ---------------------------------------------------------------------------------------------

def test_the_bn_batch_is_a_departure_when_it_is_not_the_papers(tmp_path):
    paper = load_config(RESNET50)
    assert recipe_departures(paper, paper, 8) == [] and recipe_departures(paper, paper, 1) == []
    assert recipe_departures(paper, paper, 32) == ["BN batch: 32 → 8 (256 images on 32 GPUs)"]
    whole_gpu = load_config(LARGE_BATCH_50, ["model.bn_group_size=0"])
    assert recipe_departures(paper, whole_gpu, 32)[-1] == "BN batch: 32 → 256 (8192 images on 32 GPUs)"

    runs = {r.label: r for r in planned_runs(REPO / "configs/tables/table2.yaml", tmp_path)}
    write_run(runs["ResNet-18"], world_size=32)  # trained on 4 nodes of 8
    write_run(runs["ResNet-34"], world_size=8)
    markdown = write_report(REPO / "configs/tables/table2.yaml", tmp_path, tmp_path / "report")[0].read_text()
    departures = {line.split("|")[1].strip(): line.strip("|").split("|")[-1].strip()
                  for line in markdown.splitlines() if line.startswith("| ResNet-")}
    assert departures == {"ResNet-18": "BN batch: 32 → 8 (256 images on 32 GPUs)", "ResNet-34": "none"}

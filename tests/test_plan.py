"""`python -m launch plan`: GPU-hours and wall time of a table, from a profile or the shipped reference figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.plan import (Rates, makespan, plan_table, protocol_views, table_evaluation_views, train_steps,
                         training_evaluations)
from launch.profile import REFERENCE, load_profile
from launch.slurm import JobResources
from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def launch_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", "plan", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def row_line(out: str, label: str) -> list:
    """The cells of the table line of row `label` (labels hold one space at most, cells are apart by two)."""
    line = next(line for line in out.splitlines() if line.startswith(label + "  "))
    return [cell.strip() for cell in line.split("  ") if cell.strip()]


@pytest.mark.parametrize("table, labels, runs", [
    ("table3", ["plain-34", "ResNet-34 A", "ResNet-34 B", "ResNet-34 C", "ResNet-50", "ResNet-101", "ResNet-152"], 7),
    ("table6", ["ResNet-20", "ResNet-32", "ResNet-44", "ResNet-56", "ResNet-110", "ResNet-1202"], 10),
])
def test_plan_prints_each_row_and_the_total_from_the_reference_figures(table, labels, runs):
    proc = launch_plan(f"configs/tables/{table}.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "reference figures, not measured here" in out and "DeepLearningExamples" in out
    for label in labels:
        cells = row_line(out, label)
        # label, model, runs, GPUs, train steps, img/s/GPU, GPU-h train, GPU-h eval, wall/run, notes
        assert float(cells[-4].replace(",", "")) > 0 and float(cells[-3].replace(",", "")) > 0, cells
        assert cells[-2].endswith(("min", "h", "d")), cells
    total = row_line(out, "total")
    assert total[1] == str(runs) and float(total[2].replace(",", "")) > 0 and "makespan" in total[-1]
    assert "GPU-hours:" in out and "assumptions:" in out and "scaled by FLOPs" in out
    assert "is below" not in out and "below the" not in out  # the configs' own resources keep their recipe's share
    if table == "table3":  # 120 epochs of floor(1,281,167 / 256) = 5,004 steps (the paper's "60e4 iterations")
        assert row_line(out, "ResNet-50")[4:6] == ["32", "600,480"]  # 256 images over 8 GPUs
        assert "tencrop evaluation" in out
    else:  # 64k iterations; ResNet-110 has five seeds
        assert row_line(out, "ResNet-110")[2] == "5" and row_line(out, "ResNet-110")[4:6] == ["128", "64,000"]


def write_table(tmp_path: Path) -> Path:
    short = ["data.batch_size=100", "eval.every_steps=500"]
    rows = [
        {"label": "R20", "config": str(REPO / "configs/cifar10/resnet20.yaml"), "seeds": [0, 1, 2],
         "overrides": ["schedule.total=1000", *short]},
        {"label": "R56", "config": str(REPO / "configs/cifar10/resnet56.yaml"),
         "overrides": ["schedule.total=500", *short]},
        # The same run as R20's seed 0: counted once, in R20's row.
        {"label": "R20 again", "config": str(REPO / "configs/cifar10/resnet20.yaml"), "seeds": [0],
         "overrides": ["schedule.total=1000", *short]},
    ]
    table = {"title": "small", "kind": "table", "metrics": ["top1_error"], "protocol": "center", "seeds": [0],
             "rows": rows}
    path = tmp_path / "small.yaml"
    path.write_text(json.dumps(table))  # JSON is YAML
    return path


def write_profile(tmp_path: Path) -> Path:
    common = {"world_size": 2, "batch_size": 100, "precision": "fp32", "image_size": 32, "engine": "ddp"}
    profile = {"format": "resnet-repro-throughput", "version": 1, "kind": "measured", "created": "test",
               "eval_factor": 2.5, "machine": {"device": "cuda", "gpu": "Test GPU", "gpu_count": 2},
               "software": {}, "models": {
                   "cifar_resnet20": {**common, "images_per_s": 2000.0, "images_per_s_per_gpu": 1000.0,
                                      "eval_images_per_s_per_gpu": 4000.0},
                   "cifar_resnet56": {**common, "images_per_s": 1000.0, "images_per_s_per_gpu": 500.0}}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    return path


def test_plan_arithmetic_on_a_given_profile(tmp_path):
    table, profile = write_table(tmp_path), load_profile(write_profile(tmp_path))
    reference = load_profile(REFERENCE)
    two_gpus = lambda cfg: JobResources(nodes=1, gpus_per_node=2, time_minutes=240)
    no_manifest = [f"data.root={tmp_path / 'none'}"]  # the paper's CIFAR-10 sizes: 10,000 test images
    plan = plan_table(table, profile, reference, two_gpus, overrides=no_manifest, array_parallelism=2)

    r20, r56, again = plan.rows
    assert [len(r20.runs), len(r56.runs), len(again.runs)] == [3, 1, 0] and again.same_as == "R20"
    # R20: 1,000 steps x 100 images at 1,000 images/s per GPU = 100 GPU-s of training; evaluations at steps
    # 500 and 1,000 and the final one: 3 x 10,000 images at the measured 4,000 images/s = 7.5 GPU-s; on 2 GPUs
    # (107.5) / 2 = 53.75 s.
    run = r20.runs[0]
    assert (run.train_steps, run.train_images, run.gpus) == (1000, 100_000, 2)
    assert run.gpu_s_train == pytest.approx(100.0) and run.gpu_s_eval == pytest.approx(7.5)
    assert run.wall_s == pytest.approx(53.75)
    # R56: 500 x 100 images at 500/s = 100 GPU-s; evaluations at step 500 and the final one: 2 x 10,000 at
    # 500 x 2.5 (the profile's eval_factor) = 1,250/s = 16 GPU-s; (116) / 2 = 58 s.
    run = r56.runs[0]
    assert run.gpu_s_train == pytest.approx(100.0) and run.gpu_s_eval == pytest.approx(16.0)
    assert run.wall_s == pytest.approx(58.0)
    # Longest first onto 2 slots: [58], [53.75]; then 53.75 -> the second (107.5); then 53.75 -> the first.
    assert plan.makespan_s == pytest.approx(58.0 + 53.75)
    assert sum(r.gpu_s_train for r in plan.runs) == pytest.approx(400.0)
    assert sum(r.gpu_s_eval for r in plan.runs) == pytest.approx(3 * 7.5 + 16.0)
    assert not any(r.rate.notes for r in plan.runs)  # measured at this batch per GPU and precision

    # The same through the command line: R20's 22.5 GPU-s of evaluation = 0.0063 GPU-h; in all 400 GPU-s of
    # training = 0.11 GPU-h and 38.5 of evaluation = 0.01; makespan 111.75 s.
    proc = launch_plan(str(table), *no_manifest, "--profile", str(tmp_path / "profile.json"), "--nodes", "1",
                       "--gpus-per-node", "2", "--array-parallelism", "2")
    assert proc.returncode == 0, proc.stderr
    assert "measured by `launch bench` on 2 x Test GPU" in proc.stdout
    assert row_line(proc.stdout, "R20")[:10] == ["R20", "cifar_resnet20", "3", "2", "50", "1,000", "1,000", "0.08",
                                                 "0.0063", "54 s"]
    assert row_line(proc.stdout, "total")[:6] == ["total", "4", "0.11", "0.01", "1.9 min",
                                                  "makespan, <= 2 jobs at once"]
    # One job at a time: the sum of the runs; as many as there are runs: the longest.
    one = launch_plan(str(table), *no_manifest, "--profile", str(tmp_path / "profile.json"), "--nodes", "1",
                      "--gpus-per-node", "2", "--array-parallelism", "1")
    assert row_line(one.stdout, "total")[4] == "3.7 min"  # 219.25 s


def test_makespan_places_the_longest_first():
    assert makespan([58.0, 53.75, 53.75, 53.75], 1) == pytest.approx(219.25)
    assert makespan([58.0, 53.75, 53.75, 53.75], 2) == pytest.approx(111.75)
    assert makespan([58.0, 53.75, 53.75, 53.75], 64) == pytest.approx(58.0)
    assert makespan([3, 3, 2, 2, 2], 2) == pytest.approx(7)  # LPT: [3, 2, 2], [3, 2]
    assert makespan([], 4) == 0
    with pytest.raises(ConfigError):
        makespan([1.0], 0)


def test_steps_and_evaluations_follow_the_schedule_and_the_protocol():
    cfg = load_config(REPO / "configs/imagenet/resnet50.yaml")
    total, per_epoch = train_steps(cfg, 1_281_167)
    assert (per_epoch, total) == (5004, 600_480)
    # Every epoch's end but the last, whose evaluation is the final one: 119 + 1.
    assert training_evaluations(cfg, total, per_epoch) == 120
    assert protocol_views("tencrop", cfg) == 10
    # Whole 4:3 images at 224, 256, 384, 480, 640 against one 224 x 224 view: 903,168 / 50,176 x 4/3.
    assert protocol_views("multiscale", cfg) == pytest.approx(24.0)
    # What `launch reproduce` evaluates after training: a table's protocol, Fig. 7's centre pass, else nothing.
    assert table_evaluation_views("table", "tencrop", cfg) == 10 and table_evaluation_views("table", "center", cfg) == 0
    assert table_evaluation_views("responses", "center", cfg) == 1
    assert table_evaluation_views("curves", "center", cfg) == 0
    cifar = load_config(REPO / "configs/cifar10/resnet110.yaml")
    assert train_steps(cifar, 50_000) == (64_000, 390)
    assert training_evaluations(cifar, 64_000, 390) == 65  # every 1,000 steps, the 64,000th too, + the final


def test_a_model_missing_from_the_profile_is_scaled_by_flops_from_its_nearest_measured_relative(tmp_path):
    profile, reference = load_profile(write_profile(tmp_path)), load_profile(REFERENCE)
    cfg = load_config(REPO / "configs/cifar10/resnet32.yaml", ["data.batch_size=100"])
    rate = Rates(profile, reference).for_run(cfg, 2)
    macs = reference["macs"]
    assert rate.train == pytest.approx(1000.0 * macs["cifar_resnet20"] / macs["cifar_resnet32"])
    assert any("the measured cifar_resnet20 scaled by FLOPs" in note for note in rate.notes)
    # No ImageNet net measured: the reference ResNet-50, at its per-GPU batch of 256 (not this run's 32).
    imagenet = load_config(REPO / "configs/imagenet/resnet101.yaml")
    rate = Rates(profile, reference).for_run(imagenet, 8)
    assert rate.train == pytest.approx(2077.6 * macs["resnet50"] / macs["resnet101"])
    assert any("the reference resnet50 scaled by FLOPs" in note for note in rate.notes)
    assert any("256 images per GPU, this run 32" in note for note in rate.notes)


def test_split_sizes_come_from_the_manifest_when_data_root_has_one(digits_dataset, tmp_path):
    common = {"world_size": 1, "batch_size": 64, "precision": "fp32", "image_size": 32}
    profile = {"format": "resnet-repro-throughput", "version": 1, "kind": "measured", "machine": {}, "software": {},
               "models": {"cifar_resnet14": {**common, "images_per_s": 500.0, "images_per_s_per_gpu": 500.0,
                                             "eval_images_per_s_per_gpu": 2000.0}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    plan = plan_table(REPO / "configs/demo/tables/digits.yaml", load_profile(path), load_profile(REFERENCE),
                      lambda cfg: JobResources(gpus_per_node=1), overrides=[f"data.root={digits_dataset}"])
    (run,) = plan.runs
    # 1,500 train digits: floor(1500 / 64) = 23 steps an epoch, 15 epochs; 14 epoch-end evaluations and the
    # final one, each of the 297 test digits.
    assert (run.train_steps, run.train_images) == (345, 345 * 64)
    assert run.train_eval_views == 15 * 297 and run.protocol_views == 0
    assert run.wall_s == pytest.approx(345 * 64 / 500 + 15 * 297 / 2000)
    assert any("the manifest of" in line for line in plan.assumptions)


def test_plan_refuses_bad_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    proc = launch_plan("configs/tables/table6.yaml", "--profile", str(bad))
    assert proc.returncode == 2 and "error:" in proc.stderr and "not a throughput profile" in proc.stderr
    proc = launch_plan("configs/tables/table6.yaml", "--array-parallelism", "0")
    assert proc.returncode == 2 and "--array-parallelism" in proc.stderr

"""`python -m launch plan`: GPU-hours and wall time of a table, from a profile or the shipped reference figures."""

import argparse
import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from launch.cli import main as launch_main
from launch.plan.bench_results import startup_seconds
from launch.plan.costs import plan_table
from launch.plan.profile import REFERENCE, load_profile
from launch.plan.rates import Rates
from launch.plan.scaling import Cluster, checkpoint_saves, parse_bandwidth, reference_network, run_step
from launch.plan.workload import makespan, protocol_views, table_evaluation_views, train_steps, training_evaluations
from pipeline.config import ConfigError, SlurmConfig, load_config
from pipeline.config.schema import CheckpointConfig
from tests.support import REPO
from tests.support.commands import launch_here


def launch_plan(*args: str) -> subprocess.CompletedProcess:
    """`python -m launch plan <args>` in this process: the nets' sizes, counted once per process, are then counted
    once for every test here (a subprocess per call spent seconds rebuilding ResNet-1202 on the meta device)."""
    return launch_here("plan", *args)


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
    # Checkpoints at every epoch's end and every 30 minutes, whatever the CIFAR configs say: the arithmetic
    # below counts the saves by hand.
    short = ["data.batch_size=100", "eval.every_steps=500", "checkpoint.at_epoch_end=true",
             "checkpoint.every_minutes=30"]
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
    two_gpus = lambda cfg: SlurmConfig(nodes=1, gpus_per_node=2, time_minutes=240)
    no_manifest = [f"data.root={tmp_path / 'none'}"]  # the paper's CIFAR-10 sizes: 10,000 test images
    plan = plan_table(table, profile, reference, two_gpus, overrides=no_manifest, array_parallelism=2)

    r20, r56, again = plan.rows
    assert [len(r20.runs), len(r56.runs), len(again.runs)] == [3, 1, 0] and again.same_as == "R20"
    # R20: 1,000 steps of 50 images per GPU at 1,000 images/s = 50 ms each, 100 GPU-s of training. Its
    # all-reduce of 269,722 fp32 gradients on one node (the reference H100 node's NVLink, 360 GB/s),
    # 2 x 1/2 x 1,078,888 bytes / 360 GB/s + one bucket's 50 µs = 52.997 µs: one bucket, so the last, ready only
    # when backward ends: none of it hidden. Checkpoints: epoch 1's end (epoch 2's is the final save) and the
    # final save, each a snapshot of 2 x 269,722 x 4 + 5,656 (BN) = 2,163,432 bytes at 10 GB/s = 216.3432 µs.
    # Evaluations at steps 500 and 1,000 and the final one: 3 x 10,000 images at the measured 4,000 images/s =
    # 7.5 GPU-s. On 2 GPUs: 50 + 1,000 x 52.997 µs + 2 x 216.3432 µs + 3.75 = 53.8034296 s.
    run = r20.runs[0]
    r20_comm = 1_078_888 / 360e9 + 50e-6
    assert (run.train_steps, run.train_images, run.gpus) == (1000, 100_000, 2)
    assert run.step.compute_s == pytest.approx(0.05) and run.step.communication_s == pytest.approx(r20_comm)
    assert run.step.exposed_s == pytest.approx(r20_comm) and r20_comm == pytest.approx(52.99691e-6)
    assert run.saves == 2 and run.snapshot_s == pytest.approx(216.3432e-6)
    assert run.gpu_s_train == pytest.approx(2 * 50.0534296) and run.gpu_s_eval == pytest.approx(7.5)
    assert run.wall_s == pytest.approx(53.8034296)
    # R56: 500 steps of 50 images at 500/s = 100 ms each, 100 GPU-s, and its all-reduce, one bucket:
    # 3,412,072 / 360 GB/s + 50 µs = 59.478 µs a step; one epoch, so one save, the final one:
    # (2 x 853,018 x 4 + 16,696) bytes / 10 GB/s = 684.084 µs. Evaluations at step 500 and the final one:
    # 2 x 10,000 at 500 x 2.5 (the profile's eval_factor) = 1,250/s = 16 GPU-s; 50.0304231 + 8 s of wall.
    run = r56.runs[0]
    assert run.step.exposed_s == pytest.approx(3_412_072 / 360e9 + 50e-6)
    assert run.saves == 1 and run.snapshot_s == pytest.approx(684.084e-6)
    assert run.gpu_s_train == pytest.approx(2 * 50.0304231) and run.gpu_s_eval == pytest.approx(16.0)
    assert run.wall_s == pytest.approx(58.0304231)
    # Longest first onto 2 slots: [58.03], [53.80]; then 53.80 -> the second (107.6); then 53.80 -> the first.
    # The profile measured no start-up: none counted, for the runs or the report.
    assert plan.report_s == 0 and any("start-up: not counted" in line for line in plan.assumptions)
    assert plan.makespan_s == pytest.approx(58.0304231 + 53.8034296)
    assert sum(r.gpu_s_train for r in plan.runs) == pytest.approx(
        2 * (3 * 50.0534296 + 50.0304231))  # 400 s of compute, the all-reduces and the snapshots
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
                      lambda cfg: SlurmConfig(gpus_per_node=1), overrides=[f"data.root={digits_dataset}"])
    (run,) = plan.runs
    # 1,500 train digits: floor(1500 / 64) = 23 steps an epoch, 15 epochs; 14 epoch-end evaluations and the
    # final one, each of the 297 test digits; 14 epoch-end saves and the final one, each a snapshot of
    # 2 x 172,506 x 4 + 3,816 = 1,383,864 bytes at 10 GB/s.
    assert (run.train_steps, run.train_images) == (345, 345 * 64)
    assert run.train_eval_views == 15 * 297 and run.protocol_views == 0
    assert run.wall_s == pytest.approx(345 * 64 / 500 + 15 * 297 / 2000 + 15 * 1_383_864 / 10e9)
    assert any("the manifest of" in line for line in plan.assumptions)


def test_plan_refuses_bad_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    proc = launch_plan("configs/tables/table6.yaml", "--profile", str(bad))
    assert proc.returncode == 2 and "error:" in proc.stderr and "not a throughput profile" in proc.stderr
    proc = launch_plan("configs/tables/table6.yaml", "--array-parallelism", "0")
    assert proc.returncode == 2 and "--array-parallelism" in proc.stderr


def test_rows_plan_only_the_rows_asked_for_and_sweep_submits_those(tmp_path):
    rows = ("ResNet-50", "ResNet-152")
    proc = launch_plan("configs/tables/table3.yaml", "--rows", *rows)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("\nrow "):proc.stdout.index("\ntotal")]
    assert [line.split("  ")[0] for line in table.splitlines()[3:-1]] == list(rows), proc.stdout  # less its rule
    assert row_line(proc.stdout, "total")[1] == "2"
    refused = launch_plan("configs/tables/table3.yaml", "--rows", "ResNet-5")
    assert refused.returncode == 2 and "has no row 'ResNet-5'; its rows: plain-34" in refused.stderr
    out = io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out):
        assert launch_main(["sweep", "configs/tables/table3.yaml", "--rows", *rows, "--runs", str(tmp_path),
                            "--dry-run"]) == 0
    assert [line.split()[2] for line in out.getvalue().splitlines() if line.startswith("would submit")] == [
        str(tmp_path / "imagenet-resnet50-seed0"), str(tmp_path / "imagenet-resnet152-seed0")], out.getvalue()


def write_imagenet_case(tmp_path: Path) -> tuple:
    """A one-row ResNet-50 table (2 epochs, ten-crop) and a profile measured on one node of 8 GPUs."""
    row = {"label": "R50", "config": str(REPO / "configs/imagenet/resnet50.yaml"),
           "overrides": ["schedule.total=2", "schedule.milestones=[1]", "eval.every_epochs=1",
                         "checkpoint.at_epoch_end=true", "checkpoint.every_minutes=30"]}
    table = {"title": "scaling", "kind": "table", "metrics": ["top1_error"], "protocol": "tencrop", "seeds": [0],
             "rows": [row]}
    (tmp_path / "r50.yaml").write_text(json.dumps(table))
    entry = {"world_size": 8, "batch_size": 256, "precision": "bf16", "image_size": 224, "engine": "ddp",
             "images_per_s": 8000.0, "images_per_s_per_gpu": 1000.0, "eval_images_per_s_per_gpu": 4000.0,
             "startup_s": 60.0}
    profile = {"format": "resnet-repro-throughput", "version": 1, "kind": "measured", "created": "test",
               "machine": {"device": "cuda", "gpu": "Test GPU", "gpu_count": 8}, "software": {},
               "models": {"resnet50": entry}}
    (tmp_path / "p8.json").write_text(json.dumps(profile))
    return tmp_path / "r50.yaml", tmp_path / "p8.json"


def scaling_section(out: str) -> str:
    return out[out.index("Scaling over nodes per run"):]


def test_scaling_arithmetic_on_a_given_profile(tmp_path):
    table, profile_path = write_imagenet_case(tmp_path)
    profile, reference = load_profile(profile_path), load_profile(REFERENCE)
    no_manifest = [f"data.root={tmp_path / 'none'}"]  # the paper's ImageNet: 1,281,167 train, 50,000 val

    def at(nodes: int):
        resources = lambda cfg: SlurmConfig(nodes=nodes, gpus_per_node=8, time_minutes=1440)
        return plan_table(table, profile, reference, resources, overrides=no_manifest).runs[0]

    one, four = at(1), at(4)
    # floor(1,281,167 / 256) = 5,004 steps an epoch, 2 epochs. Gradients: 25,557,032 parameters x 4 bytes
    # (bf16 compute, fp32 reduction) = 102,228,128 bytes in ceil(102,228,128 / 25 MiB) = 4 buckets, the last
    # (reduced after backward) holding what the 3 full ones leave: 25,557,032 - 3 x 6,553,600 = 5,896,232
    # gradients, 23,584,928 bytes. The bandwidths: the reference H100 node's, 360 GB/s NVLink, 400 GB/s network.
    assert (one.train_steps, one.steps_per_epoch, one.epochs) == (10_008, 5_004, 2)
    # 1 node, 8 GPUs: 32 images per GPU / 1,000 images/s = 32 ms; the ring over NVLink, 2 x 7/8 x 102,228,128
    # / 360 GB/s + 4 x 50 µs = 696.94 µs. The first 3 buckets hide behind backward's 2/3 x 32 = 21.3 ms; the
    # last, 2 x 7/8 x 23,584,928 / 360 GB/s + 50 µs = 164.65 µs, shows: a step of 32.16465 ms.
    assert one.step.compute_s == pytest.approx(0.032) and one.step.communication_s == pytest.approx(696.94229e-6)
    assert one.step.exposed_s == pytest.approx(164.64896e-6) and one.step.total_s == pytest.approx(32.16464896e-3)
    # 4 nodes, 32 GPUs: 8 ms of compute; the ring through the nodes at the slower link, NVLink's 360 GB/s (the
    # network's 400 is faster): 2 x 31/32 x 102,228,128 / 360 GB/s + 4 x 50 µs = 750.19 µs, of which the last
    # bucket's 2 x 31/32 x 23,584,928 / 360 GB/s + 50 µs = 176.93 µs shows, the rest hidden behind 5.3333 ms.
    assert four.gpus == 32 and four.images_per_gpu == 8 and four.below_recipe  # the recipe's 32 per GPU
    assert four.step.compute_s == pytest.approx(0.008) and four.step.communication_s == pytest.approx(750.18611e-6)
    assert four.step.exposed_s == pytest.approx(176.93277e-6) and four.step.total_s == pytest.approx(8.17693277e-3)
    # Pauses of an epoch. Evaluation: after epoch 1 and the final one, 2 x 50,000 images at 4,000/s per GPU over
    # 2 epochs: 50,000 / 32,000 = 1.5625 s on 8 GPUs, 0.390625 s on 32. Checkpoints: epoch 1's end and the final
    # save, each (2 x 25,557,032 x 4 + 212,904 BN bytes) / 10 GB/s = 20.466916 ms: one an epoch.
    assert one.train_eval_s / one.epochs == pytest.approx(1.5625)
    assert four.train_eval_s / four.epochs == pytest.approx(0.390625)
    assert one.saves == 2 and one.snapshot_s == pytest.approx(0.020466916)
    # images/s over an epoch with their pauses: 1,281,024 / (5,004 x 32.16464896 ms + 1.5625 + 0.020466916 =
    # 162.5349 s) = 7,881.53; 1,281,024 / (5,004 x 8.17693277 ms + 0.390625 + 0.020466916 = 41.3283 s) =
    # 30,996.17: a speed-up of 3.9328 on 4 times the GPUs, 98.3% efficient.
    assert one.train_images_per_s == pytest.approx(7881.533346)
    assert four.train_images_per_s == pytest.approx(30996.168046)
    # Wall: 2 epochs, one training start-up (60 s), then the ten-crop job: 10 x 50,000 / (4,000 x GPUs) and its
    # own start-up. 1 node: 2 x 162.5349 + 60 + 15.625 + 60 = 460.6947 s; 4: 2 x 41.3283 + 60 + 3.90625 + 60 =
    # 206.5632 s. GPU-hours: 8 x 460.6947 = 3,685.56 GPU-s; 32 x 206.5632 = 6,610.02.
    assert one.wall_s == pytest.approx(460.694741) and four.wall_s == pytest.approx(206.563177)
    assert one.gpu_s_train + one.gpu_s_eval == pytest.approx(3685.557925)
    assert four.gpu_s_train + four.gpu_s_eval == pytest.approx(6610.021665)

    # The same through the command line: the table at the first count, a line per count, the totals (with the
    # report: one more start-up of 60 s).
    proc = launch_plan(str(table), *no_manifest, "--profile", str(profile_path), "--nodes", "1", "4")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert row_line(out, "R50")[:5] == ["R50", "resnet50", "1", "8", "32"]  # the table at 1 node
    prose = " ".join(out.split())  # the assumptions, unwrapped
    assert "communication: the gradients" in prose and "360 GB/s (2880 Gb/s)" in prose
    assert "400 GB/s (3200 Gb/s)" in prose and "the default bandwidths: an 8-GPU H100 node" in prose
    assert "DGX H100 datasheet" in prose and "[configs/throughput/reference.json]" in prose
    assert "0.67 of compute" in out and "start-up: 60.0 s a job" in out
    scaling = scaling_section(out)
    lines = [[c.strip() for c in line.split("  ") if c.strip()] for line in scaling.splitlines()]
    assert ["R50", "1", "8", "32", "32.2 ms", "32 ms", "697 µs", "165 µs", "1.56 s", "20.5 ms", "7,882", "1.00",
            "100%", "7.7 min"] in lines
    assert ["4", "32", "8*", "8.18 ms", "8 ms", "750 µs", "177 µs", "391 ms", "20.5 ms", "30,996", "3.93", "98%",
            "3.4 min"] in lines
    assert "* fewer images per GPU than the recipe" in scaling
    # Per count: nodes in use, GPU-hours (3,685.56 / 3,600 = 1.02) and wall (460.69 + 60 s of report = 8.7 min).
    assert ["1", "8", "1", "1.02", "8.7 min"] in lines and ["4", "32", "4", "1.84", "4.4 min"] in lines

    # A slower network, one 400 Gb/s link a node = 50 GB/s: the 4-node ring takes 2 x 31/32 x 102,228,128 / 50 GB/s
    # + 4 x 50 µs = 4.1613 ms; its last bucket's 963.92 µs shows, the rest (3.197 ms) hides behind 5.3333 ms.
    slow = launch_plan(str(table), *no_manifest, "--profile", str(profile_path), "--nodes", "4",
                       "--inter-node-bandwidth", "400Gb/s")
    assert slow.returncode == 0, slow.stderr
    assert ["R50", "4", "32", "8*", "8.96 ms", "8 ms", "4.16 ms", "964 µs"] in [
        [c.strip() for c in line.split("  ") if c.strip()][:8] for line in scaling_section(slow.stdout).splitlines()]
    prose = " ".join(slow.stdout.split())
    assert "50 GB/s (400 Gb/s) per node" in prose and "--inter-node-bandwidth as given" in prose


def test_zero_exposes_its_weight_all_gather_and_the_last_gradient_bucket():
    # ResNet-50 (25,557,032 parameters, fp32 gradients and weights) on 4 H100 nodes of 8 GPUs, 8 ms of compute a
    # step (backward 5.3333 ms), the ring at 360 GB/s (NVLink, slower than the nodes' 400 GB/s network).
    gradients, gpus = 25_557_032 * 4, 32
    cfg = lambda *engine: load_config(REPO / "configs/imagenet/resnet50.yaml", list(engine))
    # ZeRO 1 reduce-scatters the gradients in ceil(25,557,032 / 5M) = 6 buckets, 31/32 x bytes / 360 GB/s + 6 x
    # 50 µs = 575.09 µs, during backward but for the last bucket, the 557,032 gradients left after 5 full ones
    # (56.00 µs); after the optimizer's step it all-gathers the updated weights, as long again and all exposed.
    zero = run_step(cfg("engine.name=deepspeed", "engine.zero_stage=1"), gpus, 4, 1000.0, Cluster())
    scatter = 31 / 32 * gradients / 360e9 + 6 * 50e-6
    last = 31 / 32 * 557_032 * 4 / 360e9 + 50e-6
    assert zero.compute_s == pytest.approx(0.008) and zero.communication_s == pytest.approx(2 * scatter)
    assert zero.exposed_s == pytest.approx(last + scatter) and zero.exposed_s == pytest.approx(631.08888e-6)
    # DeepSpeed without ZeRO all-reduces the gradients in one piece after backward: all of it shows.
    flat = run_step(cfg("engine.name=deepspeed", "engine.zero_stage=0"), gpus, 4, 1000.0, Cluster())
    assert flat.exposed_s == flat.communication_s == pytest.approx(2 * 31 / 32 * gradients / 360e9 + 50e-6)
    # One GPU moves nothing; DDP on one node shows only its last bucket (the test above).
    assert run_step(cfg("engine.name=ddp"), 1, 1, 1000.0, Cluster()).exposed_s == 0


def test_a_table_of_one_gpu_runs_is_explained_by_its_makespan_not_a_speed_up(tmp_path):
    table, profile = write_table(tmp_path), tmp_path / "profile.json"
    write_profile(tmp_path)
    no_manifest = [f"data.root={tmp_path / 'none'}"]
    # The CIFAR configs' own resources: one GPU a run. R20: 1,000 steps of 100 images at 1,000/s = 100 s, its
    # evaluations 30,000 / 4,000 = 7.5 s, two snapshots of 216 µs: 107.5 s; R56: 100 + 16 s (and 684 µs).
    proc = launch_plan(str(table), *no_manifest, "--profile", str(profile), "--nodes", "1", "2", "--node-gpus", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert row_line(out, "R20")[3] == "1" and "Scaling over nodes" not in out and "speed-up" not in out
    assert "Each run of this table uses one GPU: more nodes do not make a run faster, they run more runs at once" \
        in " ".join(out.split())
    # 1 node of 2 GPUs: [116], [107.5], then 107.5 -> the second (215), 107.5 -> the first: 223.5 s = 3.7 min,
    # the table above being costed at it (at most 2 jobs at once). 2 nodes: 4 at once, the longest: 116 s.
    lines = [[c.strip() for c in line.split("  ") if c.strip()] for line in out.splitlines()]
    assert ["1", "2", "2", "3.7 min", "98%"] in lines  # busy: (3 x 107.5 + 116) / (2 x 223.5) = 98.1%
    assert ["2", "4", "4", "1.9 min", "95%"] in lines  # 438.5 / (4 x 116) = 94.5%
    assert row_line(out, "total")[-1] == "makespan, <= 2 jobs at once"
    assert "GPU-hours: 0.12 at any node count" in out


def test_bandwidths_need_a_unit_and_node_counts_a_positive_number():
    assert parse_bandwidth("25GB/s") == 25e9 and parse_bandwidth("200Gb/s") == 25e9
    assert parse_bandwidth("400 Gbit/s") == 50e9 and parse_bandwidth("1.5TB/s") == 1.5e12
    with pytest.raises(argparse.ArgumentTypeError, match="give a number and a unit"):
        parse_bandwidth("25")
    proc = launch_plan("configs/tables/table3.yaml", "--inter-node-bandwidth", "25")
    assert proc.returncode == 2 and "give a number and a unit" in proc.stderr
    proc = launch_plan("configs/tables/table3.yaml", "--nodes", "0", "2")
    assert proc.returncode == 2 and "--nodes" in proc.stderr


def test_checkpoint_saves_follow_the_config():
    # 2 epochs of 5,004 steps at 0.5 s: an epoch is 2,502 s, 41.7 minutes.
    def saves(**checkpoint):
        return checkpoint_saves(CheckpointConfig(**checkpoint), 10_008, 5_004, 0.5)

    # Epoch 1's end and the final save; a 30-minute clock restarted by each, once in each epoch's 41.7 min.
    assert saves(at_epoch_end=True, every_minutes=30) == 1 + 2 + 1
    # The clock alone: 5,004 s of training, floor(5,004 / 1,800) = 2 saves, and the final one.
    assert saves(at_epoch_end=False, every_minutes=30) == 2 + 1
    # Every 1,000 steps (10), epoch 1's end, and the final save; 500 s stretches never reach 30 minutes.
    assert saves(at_epoch_end=True, every_steps=1000, every_minutes=30) == 10 + 1 + 1
    assert saves(at_epoch_end=False, every_minutes=0) == 1


def test_bench_start_up_is_a_run_less_its_steps_and_final_evaluation():
    # 60 steps of 64 images at 640 images/s = 6 s, a final evaluation of 2 s: 92 s of the 100 went elsewhere.
    assert startup_seconds(100.0, 60, 64, 640.0, {"samples": 297, "seconds": 2.0}) == pytest.approx(92.0)
    assert startup_seconds(100.0, 60, 64, 640.0, None) == pytest.approx(94.0)  # the evaluation was not seen


def test_the_reference_bandwidths_are_read_with_their_unit_and_refused_in_one_line(tmp_path):
    network = reference_network()
    assert (network.intra_node_bytes_per_s, network.inter_node_bytes_per_s) == (360e9, 400e9)
    assert "nominal" in network.source.lower() and Cluster().inter_node_bytes_per_s == 400e9
    profile = json.loads(REFERENCE.read_text())
    profile["network"]["inter_node_bandwidth"] = "400"  # bits or bytes? refused, naming the file and key
    (tmp_path / "no_unit.json").write_text(json.dumps(profile))
    with pytest.raises(ConfigError, match=r"no_unit.json: network.inter_node_bandwidth: '400' is not a bandwidth"):
        reference_network(tmp_path / "no_unit.json")
    del profile["network"]
    (tmp_path / "none.json").write_text(json.dumps(profile))
    with pytest.raises(ConfigError, match=r"none.json: no 'network' section"):
        reference_network(tmp_path / "none.json")

"""`python -m launch bench`: a short real training run per model on real shards, written as a throughput profile."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.plan.bench import paper_configs, resolve_model
from launch.plan.bench_results import EvalTimer, train_throughput
from launch.plan.profile import load_profile
from pipeline.config import ConfigError
from tests.support import REPO
from tests.support.commands import launch


def test_bench_writes_a_profile_on_cpu_and_a_second_in_two_processes_extends_it(digits_dataset, tmp_path):
    out = tmp_path / "profile.json"
    # The overrides may follow --models: argparse hands them to --models, bench takes them back.
    proc = launch("bench", "--models", "cifar_resnet8", f"data.root={digits_dataset}", "--steps", "4",
                        "--warmup-steps", "2", "--nproc", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    profile = load_profile(out)
    assert profile["kind"] == "measured" and profile["launcher"] == "local"
    entry = profile["models"]["cifar_resnet8"]
    assert entry["images_per_s"] > 0 and entry["images_per_s_per_gpu"] == entry["images_per_s"]
    assert (entry["world_size"], entry["batch_size"], entry["image_size"]) == (1, 128, 32)
    assert (entry["precision"], entry["engine"], entry["data_backend"]) == ("fp32", "ddp", "dali")
    assert entry["steps"] == 4 and entry["warmup_steps"] == 2 and 0 <= entry["data_wait_fraction"] <= 1
    assert entry["config"] == "configs/cifar10/_base.yaml model.name=cifar_resnet8"  # no paper config: the family's
    software, machine = profile["software"], profile["machine"]
    assert software["python"] and software["torch"] and "cuda" in software and "dali" in software
    assert machine["device"] in ("cpu", "cuda") and machine["cpu_count"] >= 1 and machine["cpu"]
    assert "cifar_resnet8" in proc.stdout and "images/s" in proc.stdout  # the summary table
    assert not list(tmp_path.glob(".bench-*"))  # its run directories are gone

    # Another model measured in two processes, added to the profile of the same machine.
    second = launch("bench", "--models", "configs/demo/digits.yaml",
                          f"data.root={digits_dataset}", "--steps", "4", "--warmup-steps", "2", "--nproc", "2",
                          "--out", str(out))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    profile = load_profile(out)
    assert set(profile["models"]) == {"cifar_resnet8", "cifar_resnet14"}  # the first one kept
    entry = profile["models"]["cifar_resnet14"]
    assert entry["world_size"] == 2 and entry["batch_size"] == 64 and entry["config"] == "configs/demo/digits.yaml"
    assert entry["images_per_s_per_gpu"] == pytest.approx(entry["images_per_s"] / 2) and entry["images_per_s"] > 0


def test_unknown_models_and_missing_data_are_refused_before_anything_runs(tmp_path):
    proc = launch("bench", "--models", "resnet51", "--out", str(tmp_path / "p.json"))
    assert proc.returncode == 2 and "unknown model 'resnet51'" in proc.stderr and "resnet50" in proc.stderr
    proc = launch("bench", "--models", "cifar_resnet20", f"data.root={tmp_path / 'nothing'}", "--out",
                        str(tmp_path / "p.json"))
    assert proc.returncode == 2 and "no manifest" in proc.stderr
    assert not (tmp_path / "p.json").exists()


def test_model_names_map_to_the_paper_configs():
    configs = paper_configs()
    assert configs["resnet50"] == REPO / "configs/imagenet/resnet50.yaml"
    assert configs["resnet34"] == REPO / "configs/imagenet/resnet34.yaml"  # not resnet34_b.yaml
    assert configs["cifar_resnet110"] == REPO / "configs/cifar10/resnet110.yaml"
    assert configs["cifar_resnet1202"] == REPO / "configs/cifar10/resnet1202.yaml"
    assert resolve_model("configs/demo/digits.yaml") == (Path("configs/demo/digits.yaml"), [])
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model("vgg16")


def test_throughput_is_images_over_time_after_the_warm_up():
    records = [{"step": 0, "event": "start"},
               {"step": 10, "images_per_s": 10.0, "data_wait_fraction": 0.9},  # warm-up: left out
               {"step": 20, "images_per_s": 100.0, "data_wait_fraction": 0.1},
               {"step": 40, "images_per_s": 400.0, "data_wait_fraction": 0.4},
               {"step": 40, "event": "final evaluation"}]
    rate, wait, steps = train_throughput(records, warmup=10)
    # 10 steps at 100/s and 20 at 400/s: 30 steps' images in 10/100 + 20/400 = 0.15 step-seconds per image.
    assert steps == 30 and rate == pytest.approx(30 / 0.15) and wait == pytest.approx((10 * 0.1 + 20 * 0.4) / 30)
    with pytest.raises(ConfigError):
        train_throughput(records, warmup=40)


def test_eval_timer_times_the_final_evaluation_from_its_records(tmp_path):
    """The window runs from the poll that first read the final evaluation's start event to the one that first read
    its record. The test writes each record, notes the time, and waits until the timer has read it: the window lies
    within the times noted around the evaluation, however late a busy machine runs the timer's polls."""
    metrics = tmp_path / "metrics.jsonl"

    def write(record: dict) -> float:
        """Append a record as training does; the time just before it."""
        before = time.perf_counter()
        with metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return before

    def read_by(timer: EvalTimer, end: str) -> float:
        """Wait until the timer has read the record of `end` ("started" or "ended"); the time it was seen read."""
        deadline = time.monotonic() + 120  # only a broken timer gets here: no polling is this late
        while getattr(timer, end) is None:
            assert time.monotonic() < deadline, f"the timer never read the record that sets {end!r}"
            time.sleep(0.01)
        return time.perf_counter()

    with EvalTimer(metrics) as timer:
        write({"step": 6, "loss": 0.5})
        time.sleep(0.2)  # training: before the window
        began = write({"step": 6, "event": "final evaluation"})
        began_read = read_by(timer, "started")
        time.sleep(0.2)  # the evaluation
        ended = write({"step": 6, "kind": "final", "val_samples": 297})
        ended_read = read_by(timer, "ended")
        time.sleep(0.2)  # the run's end: after the window
    window = timer.window()
    assert window["samples"] == 297
    # A poll reads the clock, then the file: a record written between the two is dated a moment before it was
    # written. One poll of slack allows for that; the timer knows its times to a poll, no better.
    slack = EvalTimer.POLL_S
    assert ended - began_read - slack <= window["seconds"] <= ended_read - began + slack, window


@pytest.mark.slurm
@pytest.mark.slow
def test_bench_as_a_slurm_job_records_where_it_ran(digits_dataset, tmp_path):
    from tests.support.slurm import require_minicluster

    require_minicluster()
    out = tmp_path / "profile.json"
    proc = launch("bench", "--models", "cifar_resnet8", f"data.root={digits_dataset}", "--steps", "2", "--warmup-steps",
                        "2", "--slurm", "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1",
                        "--time", "10", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    profile = load_profile(out)
    assert profile["launcher"] == "slurm" and profile["resources"]["tasks_per_node"] == 2
    entry = profile["models"]["cifar_resnet8"]
    assert entry["world_size"] == 2 and entry["images_per_s"] > 0
    assert profile["machine"]["host"] and profile["software"]["torch"]  # from inside the job
    assert "submitted job" in proc.stdout and not list(tmp_path.glob(".bench-*"))


@pytest.mark.slurm
@pytest.mark.slow
def test_bench_waiting_says_why_and_ctrl_c_cancels_its_job_and_leaves_nothing(digits_dataset, tmp_path):
    from tests.support.slurm import queue_state, require_minicluster

    require_minicluster()
    out = tmp_path / "profile.json"
    # A job held for an hour: it waits with SLURM's reason BeginTime.
    proc = subprocess.Popen([sys.executable, "-m", "launch", "bench", "--models", "cifar_resnet8",
                             f"data.root={digits_dataset}", "--steps", "2", "--slurm", "--gpus-per-node", "0",
                             "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "10", "--sbatch",
                             "begin=now+1hour", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # As from a terminal: a shell's background job (this suite under CI may be one) starts
                            # its children with SIGINT ignored, and Python then has no KeyboardInterrupt for it.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "waits (BeginTime)" in line:
            break
    else:
        pytest.fail("no reason for the wait:\n" + "".join(lines))
    job = re.search(r"job (\S+) waits", lines[-1])[1]
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"bench: cancelled job {job} (`scancel {job}`)" in rest, "".join(lines) + rest
    assert "run directories are removed" in rest and not list(tmp_path.glob(".bench-*")) and not out.exists()
    deadline = time.time() + 60
    while queue_state(job):  # scancel is asynchronous
        assert time.time() < deadline, f"job {job} still queued"
        time.sleep(0.5)

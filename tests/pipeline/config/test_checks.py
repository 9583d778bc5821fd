"""Config checks that catch a table shrunk or moved by hand: milestones past the end, a net whose outputs are not
the dataset's classes, bf16 on a CPU that emulates it; said before submission. Training's start logs them:
tests/pipeline/models/test_big_nets.py (ResNet-152 on 4 classes for 2 steps); too few outputs:
tests/pipeline/train/test_run_errors.py."""

import contextlib
import io

import pytest

from launch.cli import main as launch_main
from pipeline.config import ConfigError
from pipeline.config.checks import num_classes_warning, precision_warning, schedule_warning
from pipeline.config.schema import EngineConfig, ScheduleConfig
from tests.support import REPO


def test_milestones_at_or_past_the_total_are_said_with_a_fix():
    shrunk = schedule_warning(ScheduleConfig(milestones=[32000, 48000], total=400))
    assert shrunk.startswith("schedule.milestones [32000, 48000] are at or past schedule.total (400 iterations)")
    assert "schedule.milestones=[200,300]" in shrunk and "schedule.milestones=[]" in shrunk
    assert "[100]" in schedule_warning(ScheduleConfig(milestones=[50, 100], total=100))  # at the end is too late
    assert schedule_warning(ScheduleConfig(milestones=[50, 75], total=100)) is None
    assert schedule_warning(ScheduleConfig(unit="epoch", milestones=[30, 60, 90], total=120)) is None
    assert schedule_warning(ScheduleConfig(kind="constant", milestones=[32000], total=4)) is None


def test_bf16_on_a_cpu_without_native_bf16_is_said_with_fp32_as_the_way_out():
    # This machine's CPU computes bf16 natively; a CPU that does not is given here by its /proc/cpuinfo flags.
    emulated = precision_warning(EngineConfig(precision="bf16"), "cpu", cpu_flags="flags : fpu sse2 avx2 avx512f")
    assert "without native bf16" in emulated and "engine.precision=fp32" in emulated
    assert precision_warning(EngineConfig(precision="bf16"), "cpu", cpu_flags="flags : avx512f avx512_bf16") is None
    assert precision_warning(EngineConfig(precision="bf16"), "cuda", cpu_flags="flags : avx2") is None
    assert precision_warning(EngineConfig(precision="fp32"), "cpu", cpu_flags="flags : avx2") is None


def test_a_net_with_fewer_outputs_than_classes_is_refused_and_one_with_more_is_said():
    with pytest.raises(ConfigError, match=r"model.num_classes \(10\) is below the 100 classes of m.json: set "
                                          r"model.num_classes=100"):
        num_classes_warning(10, 100, "m.json")
    more = num_classes_warning(1000, 4, "m.json")
    assert "model.num_classes (1000) is above the 4 classes of m.json: 996 outputs" in more
    assert num_classes_warning(10, 10, "m.json") is None


def test_submit_says_a_shrunk_schedule_before_anything_is_queued(tmp_path):
    err = io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert launch_main(["submit", "configs/cifar10/resnet110.yaml", "schedule.total=400", f"run.out_dir={tmp_path}",
                            "--dry-run"]) == 0
    said = "warning: cifar10-resnet110: schedule.milestones [32000, 48000] are at or past schedule.total"
    assert said in err.getvalue()
    assert not any(tmp_path.iterdir())

"""Config checks that catch a table shrunk or moved by hand: milestones past the end, a warm-up that outlasts the
first milestone, a net whose outputs are not the dataset's classes, bf16 on a CPU that emulates it; said before
submission. Training's start logs them:
tests/pipeline/models/test_big_nets.py (ResNet-152 on 4 classes for 2 steps); too few outputs:
tests/pipeline/train/test_run_errors.py."""

import contextlib
import io
import math
import re
import shlex

import pytest

from launch.cli import main as launch_main
from pipeline.config import ConfigError, load_config
from pipeline.config.checks import num_classes_warning, precision_warning, schedule_warning, warmup_warning
from pipeline.config.schema import EngineConfig, ScheduleConfig
from pipeline.tables.spec import planned_runs
from tests.support import REPO


def test_milestones_at_or_past_the_total_are_said_with_a_fix():
    shrunk = schedule_warning(ScheduleConfig(milestones=[32000, 48000], total=400))
    assert shrunk.startswith("schedule.milestones [32000, 48000] are at or past schedule.total (400 iterations)")
    assert "schedule.milestones=[200,300]" in shrunk and "schedule.milestones=[]" in shrunk
    assert "[100]" in schedule_warning(ScheduleConfig(milestones=[50, 100], total=100))  # at the end is too late
    assert schedule_warning(ScheduleConfig(milestones=[50, 75], total=100)) is None
    assert schedule_warning(ScheduleConfig(unit="epoch", milestones=[30, 60, 90], total=120)) is None
    assert schedule_warning(ScheduleConfig(kind="constant", milestones=[32000], total=4)) is None


def test_a_warmup_that_outlasts_the_first_milestone_is_said_with_a_fix():
    resnet110 = {"warmup": "until_train_error", "warmup_iterations": 2000}
    shrunk = warmup_warning(ScheduleConfig(milestones=[50, 75], total=100, **resnet110))
    assert shrunk.startswith("schedule.warmup_iterations (2000) can outlast the first of schedule.milestones (step 50)")
    assert "schedule.warmup_iterations=45" in shrunk and "logging.every_steps" in shrunk
    # No drop before the end (none at all, or milestones past it): the end is what the warm-up must not reach.
    assert "outlast schedule.total (step 100)" in warmup_warning(ScheduleConfig(milestones=[], total=100, **resnet110))
    assert "schedule.total (step 100)" in warmup_warning(ScheduleConfig(milestones=[200], total=100, **resnet110))
    assert "schedule.total (step 60)" in warmup_warning(ScheduleConfig(kind="constant", total=60, **resnet110))
    # A fixed warm-up outlasts it for sure; epochs count in steps once the loader says how many an epoch has.
    linear = ScheduleConfig(unit="epoch", milestones=[2, 3], total=4, warmup="linear", warmup_iterations=780)
    assert warmup_warning(linear) is None  # before the data is opened: unknown
    assert warmup_warning(linear, steps_per_epoch=100).startswith(
        "schedule.warmup_iterations (780) outlasts the first of schedule.milestones (step 200): lr is still warming up")
    assert warmup_warning(linear, steps_per_epoch=1000) is None
    assert warmup_warning(ScheduleConfig(milestones=[50, 75], total=100, warmup="until_train_error",
                                         warmup_iterations=45)) is None
    assert warmup_warning(ScheduleConfig(milestones=[50, 75], total=100, warmup_iterations=2000)) is None  # no warm-up


TRAIN_IMAGES = {"imagenet": 1_281_167, "cifar10": 50_000, "demo": 1_500}


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob(
    "*.yaml") if not p.name.startswith("_") and p.parts[-2] != "tables"))
def test_the_papers_configs_warm_up_before_their_first_milestone(config):
    cfg = load_config(REPO / "configs" / config)
    steps_per_epoch = math.ceil(TRAIN_IMAGES[config.split("/")[0]] / cfg.data.batch_size)
    assert warmup_warning(cfg.schedule, steps_per_epoch) is None
    assert schedule_warning(cfg.schedule) is None


def _shrunk_recipe() -> tuple[dict, list[str]]:
    """The options (--rows, --seeds) and overrides of docs/reproducing.md's "Trying a table first" command."""
    text = (REPO / "docs" / "reproducing.md").read_text()
    command = re.search(r"python -m launch reproduce configs/tables/table6.yaml .*?(?<!\\)\n", text, re.S).group(0)
    words = shlex.split(command.replace("\\\n", " "))
    options, option = {}, None
    for word in words[5:]:  # after `python -m launch reproduce TABLE`
        if word.startswith("--"):
            option = options.setdefault(word, [])
        elif "=" not in word:
            option.append(word)
    return options, [w for w in words if "=" in w and not w.startswith("-")]


def test_the_docs_shrunk_table6_leaves_the_warmup_before_its_first_milestone(tmp_path):
    options, overrides = _shrunk_recipe()
    rows, seeds = options["--rows"], [int(seed) for seed in options["--seeds"]]
    assert rows == ["ResNet-20", "ResNet-110"] and "schedule.total=100" in overrides
    runs = planned_runs(REPO / "configs" / "tables" / "table6.yaml", tmp_path, seeds, tuple(overrides), rows)
    assert [run.label for run in runs] == rows
    for run in runs:
        assert warmup_warning(run.cfg.schedule) is None and schedule_warning(run.cfg.schedule) is None, run.label
    # Without the warm-up's cap among them, ResNet-110 would hold lr 0.01 past its first milestone, and be told so.
    uncapped = [o for o in overrides if not o.startswith("schedule.warmup_iterations=")]
    (resnet110,) = planned_runs(REPO / "configs" / "tables" / "table6.yaml", tmp_path, seeds, tuple(uncapped),
                                ["ResNet-110"])
    assert "schedule.warmup_iterations (2000) can outlast" in warmup_warning(resnet110.cfg.schedule)


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
    assert "warning: cifar10-resnet110: schedule.warmup_iterations (2000) can outlast schedule.total" in err.getvalue()
    assert not any(tmp_path.iterdir())

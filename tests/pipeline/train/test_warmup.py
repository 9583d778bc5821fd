"""ResNet-110's warm-up rule: 0.01 "until the training error is below 80% (about 400 iterations)", then 0.1.

Unit tests of `schedule.warmup=until_train_error` (threshold, cap, checkpointed state), the configs that use it,
and a real 2-process training on the digits, whole and killed/resumed after warm-up ended.
"""

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.config.schema import ScheduleConfig
from pipeline.train.schedule import LRSchedule
from tests.support.training import assert_bitwise_equal, final_state, small_run, train, train_and_kill


def _schedule(**overrides) -> LRSchedule:
    cfg = ScheduleConfig(**{"kind": "multistep", "milestones": [1000], "total": 2000, "warmup": "until_train_error",
                            "warmup_lr": 0.01, "warmup_iterations": 400, **overrides})
    return LRSchedule(cfg, base_lr=0.1, steps_per_epoch=100, global_batch=128)


def test_warm_up_ends_at_the_first_logged_error_below_the_threshold():
    s = _schedule()
    assert [s.lr(i) for i in (0, 150, 399)] == [0.01] * 3  # not observed yet: warm up to the cap
    assert [s.observe_train_error(step, e) for step, e in ((50, 90.0), (100, 85.0), (150, 79.9), (200, 70.0))] \
        == [False, False, True, False]  # ended once, at 150; later errors change nothing
    assert s.warmup_end_step == 150
    assert s.lr(149) == 0.01 and s.lr(150) == 0.1 and s.lr(399) == 0.1
    assert s.lr(1000) == pytest.approx(0.01)  # the multistep schedule after it is untouched


def test_threshold_is_strictly_below():
    s = _schedule(warmup_until_error=80.0)
    assert not s.observe_train_error(50, 80.0)
    assert s.lr(50) == 0.01
    assert s.observe_train_error(100, 79.999)
    assert (s.lr(99), s.lr(100)) == (0.01, 0.1)


def test_cap_ends_warm_up_whatever_the_error():
    s = _schedule(warmup_iterations=400)
    assert not s.observe_train_error(350, 95.0)
    assert (s.lr(399), s.lr(400)) == (0.01, 0.1)  # the cap holds even before an observation reaches it
    assert s.observe_train_error(450, 95.0)  # the first observation past the cap records the cap
    assert s.warmup_end_step == 400 and (s.lr(399), s.lr(400)) == (0.01, 0.1)


def test_lr_is_a_pure_function_of_step_and_recorded_end():
    a, b = _schedule(), _schedule()
    a.observe_train_error(200, 50.0)
    b.observe_train_error(200, 50.0)
    steps = [399, 0, 250, 199, 200, 1500]
    assert [a.lr(i) for i in steps] == [b.lr(i) for i in reversed(steps)][::-1]
    assert [a.lr(i) for i in steps] == [0.1, 0.01, 0.1, 0.01, 0.1, pytest.approx(0.01)]


def test_recorded_end_survives_a_checkpoint_round_trip():
    s = _schedule()
    s.observe_train_error(100, 60.0)
    state = json.loads(json.dumps(s.state_dict()))  # plain numbers, as a checkpoint keeps them
    restored = _schedule()
    restored.load_state_dict(state)
    assert restored.warmup_end_step == 100
    assert [restored.lr(i) for i in range(0, 500, 50)] == [s.lr(i) for i in range(0, 500, 50)]
    assert not restored.observe_train_error(150, 90.0)  # already ended: a worse error does not restart it
    unfinished = _schedule()
    unfinished.load_state_dict(_schedule().state_dict())
    assert unfinished.warmup_end_step is None and unfinished.lr(300) == 0.01


def test_checkpoint_from_before_the_rule_loads():
    s = _schedule()
    s.load_state_dict({"plateau": {"divisions": 0, "best_error": None, "evals_since_best": 0}})
    assert s.warmup_end_step is None


def test_other_warm_ups_ignore_training_errors():
    for warmup in ("none", "constant", "linear"):
        s = _schedule(warmup=warmup)
        assert not s.observe_train_error(10, 1.0) and s.warmup_end_step is None
    s = _schedule(warmup="constant")
    assert (s.lr(399), s.lr(400)) == (0.01, 0.1)


def test_until_train_error_needs_a_cap():
    with pytest.raises(ValueError, match="warmup_iterations"):
        ScheduleConfig(warmup="until_train_error", warmup_iterations=0)


@pytest.mark.parametrize("config", ["resnet110", "resnet1202"])
def test_resnet110_and_1202_use_the_papers_rule(config):
    cfg = load_config(f"configs/cifar10/{config}.yaml")
    sc = cfg.schedule
    assert (sc.warmup, sc.warmup_until_error, sc.warmup_lr, cfg.optim.lr) == ("until_train_error", 80.0, 0.01, 0.1)
    assert sc.warmup_iterations > 400  # a cap above the paper's "about 400", so the error decides
    s = LRSchedule(sc, cfg.optim.lr, steps_per_epoch=391, global_batch=cfg.data.batch_size)
    assert s.lr(0) == 0.01
    s.observe_train_error(450, 79.0)
    assert (s.lr(449), s.lr(450)) == (0.01, 0.1)
    assert s.lr(32000) == pytest.approx(0.01) and s.lr(48000) == pytest.approx(0.001)


THRESHOLD = 86.0  # the digits' logged training error, at lr 0.02, first goes below it around step 20 of 32
CHECKPOINT_AFTER_END = 24


def _overrides(data: Path, out: Path) -> list:
    # W&B off: this is about the warm-up's end kept across a kill; kills with W&B offline are the kill soak's.
    return small_run(data, out, "logging.wandb_mode=disabled", "schedule.total=32", "schedule.milestones=[]",
                     "schedule.warmup=until_train_error", f"schedule.warmup_until_error={THRESHOLD}",
                     "schedule.warmup_iterations=1000", "schedule.warmup_lr=0.02")


def _records(run_dir: Path):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["lr"], r["train_top1_error"]) for r in lines if "train_top1_error" in r]
    ended = [r["step"] for r in lines if str(r.get("event", "")).startswith("warm-up ended")]
    return logged, ended


def test_training_warms_up_until_the_logged_error_is_below_threshold_and_resume_keeps_it(digits_dataset, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(2, _overrides(digits_dataset, whole))
    logged, ended = _records(whole / "t")
    end = next(step for step, _, error in logged if error < THRESHOLD)
    # Both phases happen, and warm-up ends before the checkpoint the resumed run restarts from.
    assert 2 < end < CHECKPOINT_AFTER_END, logged
    assert ended == [end]
    # Each record's lr is that of the window's last step (step - 1): 0.02 up to and including the window whose
    # error went below the threshold, 0.1 from the next.
    assert [lr for step, lr, _ in logged] == [0.02 if step <= end else 0.1 for step, _, _ in logged]

    # Killed after warm-up ended and resumed: the checkpointed end step keeps lr at 0.1, and the run is the same.
    overrides = _overrides(digits_dataset, broken)
    train_and_kill(2, overrides, broken / "t", after_checkpoint=CHECKPOINT_AFTER_END)
    train(2, overrides)
    resumed, resumed_ended = _records(broken / "t")
    assert resumed == logged
    assert resumed_ended == ended
    assert_bitwise_equal(final_state(whole / "t", 32), final_state(broken / "t", 32), "weights and optimizer state")

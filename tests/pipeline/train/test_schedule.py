"""Learning-rate schedules: the paper's recipes as pure functions of the step, and the plateau rule."""

import pytest
import torch

from pipeline.config import load_config
from pipeline.config.schema import OptimConfig, ScheduleConfig
from pipeline.engine.optimizer import build_optimizer, parameter_groups
from pipeline.models import build
from pipeline.train.schedule import LRSchedule


def test_cifar_recipe_divides_at_32k_and_48k_and_stops_at_64k():
    cfg = load_config("configs/cifar10/resnet20.yaml")
    s = LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch=391, global_batch=128)
    assert s.total_steps == 64000
    assert [s.lr(i) for i in (0, 31999)] == [0.1, 0.1]
    assert s.lr(32000) == pytest.approx(0.01) and s.lr(47999) == pytest.approx(0.01)
    assert s.lr(48000) == pytest.approx(0.001) and s.lr(63999) == pytest.approx(0.001)


def test_resnet110_warm_up_holds_0_01_until_the_training_error_is_below_80_percent():
    cfg = load_config("configs/cifar10/resnet110.yaml")
    s = LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch=391, global_batch=128)
    s.observe_train_error(350, 85.0)
    assert s.lr(0) == s.lr(399) == s.lr(400) == 0.01  # still above 80%: still warming up
    s.observe_train_error(400, 79.0)
    assert s.lr(399) == 0.01 and s.lr(400) == s.lr(401) == 0.1


def test_imagenet_epoch_milestones_and_linear_scaling_rule():
    cfg = load_config("configs/imagenet/resnet50.yaml")
    s = LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch=1251, global_batch=1024)  # 4x the paper's 256
    assert s.peak_lr == pytest.approx(0.4)
    assert s.total_steps == 120 * 1251
    assert s.lr(30 * 1251 - 1) == pytest.approx(0.4) and s.lr(30 * 1251) == pytest.approx(0.04)
    assert s.lr(90 * 1251) == pytest.approx(0.0004)


def test_linear_warm_up_ramps_to_the_scheduled_lr():
    cfg = ScheduleConfig(kind="constant", warmup="linear", warmup_iterations=10, warmup_lr=0.0)
    s = LRSchedule(cfg, base_lr=1.0, steps_per_epoch=1, global_batch=256)
    assert [round(s.lr(i), 6) for i in (0, 5, 10, 11)] == [0.0, 0.5, 1.0, 1.0]


def test_lr_is_a_pure_function_of_the_step():
    cfg = load_config("configs/cifar10/resnet110.yaml")
    a = LRSchedule(cfg.schedule, 0.1, 391, 128)
    b = LRSchedule(cfg.schedule, 0.1, 391, 128)
    steps = [50000, 3, 40000, 3, 399, 400]
    assert [a.lr(i) for i in steps] == [b.lr(i) for i in reversed(steps)][::-1]


def test_plateau_divides_after_patience_and_resumes_from_state():
    cfg = ScheduleConfig(kind="plateau", plateau_patience=2, plateau_threshold=0.0)
    s = LRSchedule(cfg, base_lr=0.1, steps_per_epoch=100, global_batch=256)
    assert [s.observe_validation_error(e) for e in (50.0, 40.0, 41.0, 40.5)] == [False, False, False, True]
    assert s.lr(0) == pytest.approx(0.01)
    restored = LRSchedule(cfg, base_lr=0.1, steps_per_epoch=100, global_batch=256)
    restored.load_state_dict(s.state_dict())
    assert restored.lr(12345) == s.lr(12345)
    assert restored.observe_validation_error(45.0) == s.observe_validation_error(45.0)


def test_weight_decay_groups():
    net = build("cifar_resnet20")
    everything = parameter_groups(net, OptimConfig())
    assert len(everything) == 1 and everything[0]["weight_decay"] == 1e-4
    split = parameter_groups(net, OptimConfig(decay_bn_and_bias=False))
    assert all(p.ndim > 1 for p in split[0]["params"]) and all(p.ndim == 1 for p in split[1]["params"])
    assert split[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in split) == len(list(net.parameters()))
    opt = build_optimizer(net, OptimConfig(), lr=0.1)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9

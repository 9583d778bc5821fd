"""SGD with momentum as in the paper, with weight decay on every parameter or on conv/FC weights only."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config.schema import OptimConfig


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """One group with decay; with `decay_bn_and_bias: false`, a second without it for BN weights and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_bn_and_bias:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    # 1-D tensors are exactly the BN scales/shifts and the biases in these networks.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer for `model`; `lr` is the schedule's value at the starting step."""
    return torch.optim.SGD(
        parameter_groups(model, cfg), lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

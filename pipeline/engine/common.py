"""What both engines share: the module prepared for its device (SyncBN, activation checkpointing, channels_last),
BN buffers given to every rank where they are read, and the autocast dtypes of each precision."""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config.schema import EngineConfig

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_model(model: nn.Module, cfg: EngineConfig, device: torch.device, distributed: bool) -> nn.Module:
    """Apply the engine options that change the module itself, then move it to `device`."""
    if cfg.sync_bn and distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.activation_checkpointing:
        checkpoint_blocks(model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each residual block's activations in backward instead of storing them.

    Overrides the blocks' `forward` on the instance, so parameter names (and checkpoints) are unchanged.
    BN running statistics are updated once per forward pass: the recomputation in backward puts them
    back as it found them (see `bn_statistics_kept`), for both engines.
    """
    blocks = list(model.blocks()) if hasattr(model, "blocks") else []
    if not blocks:
        raise ValueError("activation checkpointing needs a model with residual blocks (model.blocks())")
    for block in blocks:
        block.forward = functools.partial(_checkpointed_forward, block, block.forward)


def _checkpointed_forward(block: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return forward(x)
    return checkpoint(forward, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), bn_statistics_kept(block)))


@contextlib.contextmanager
def bn_statistics_kept(module: nn.Module):
    """BN running statistics of `module` (and their count) as they were before: what runs inside updates none.

    The layers still normalise with the batch's statistics, so a recomputation computes exactly what the
    forward pass did. (Putting them back is exact on every kernel; a zero momentum would still count.)
    """
    kept = [(buffer, buffer.clone()) for layer in module.modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm)
            for buffer in (layer.running_mean, layer.running_var, layer.num_batches_tracked) if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


class BufferSync:
    """Gives every rank rank 0's buffers (BN running statistics) before evaluation and saving.

    Gradients are averaged, buffers are not: each rank's running statistics follow its own batches. In
    training BN normalises with the batch's own statistics, so no rank reads its running statistics there;
    they matter in evaluation and in the checkpoint, and this gives every rank rank 0's just before those.
    Without it, ranks would evaluate slightly different models, and the checkpoint, which holds rank 0's,
    would score differently from the evaluation at the end of training. (Rank 0's own statistics never
    depend on another rank's, so this is what DDP's broadcast before every forward ended with as well.)
    """

    def __init__(self, module: nn.Module, distributed: bool) -> None:
        self.module, self.distributed, self.changed = module, distributed, False

    def mark_changed(self) -> None:
        self.changed = self.distributed

    def sync(self) -> None:
        if not self.changed:
            return

        for buffer in self.module.buffers():
            dist.broadcast(buffer, src=0)
        self.changed = False


def top1_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).sum()

"""The DDP engine: plain PyTorch, DistributedDataParallel over more than one rank, autocast for bf16 and fp16
(with a gradient scaler), gradients optionally averaged in bf16 by a communication hook that also runs on gloo."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint.background import FileWriter
from pipeline.checkpoint.store import load_state
from pipeline.config.schema import EngineConfig, OptimConfig
from pipeline.dist import DistInfo, from_primary
from pipeline.engine.common import AUTOCAST_DTYPES, BufferSync, bn_statistics_kept, prepare_model, top1_hits
from pipeline.engine.optimizer import build_optimizer, set_lr

# Torch 2.13 renamed DDP's `broadcast_buffers` to `forward_sync_buffers`, and the old name costs a FutureWarning at
# the top of every training's log. The new name still broadcasts rank 0's buffers once, as DDP starts, where the old
# one did not: the same numerics, since every rank's buffers are then BN's constant initial statistics (a resumed
# run loads its checkpoint after this, the same one on every rank). Older torch knows the old name alone.
_DDP_ARGS = inspect.signature(nn.parallel.DistributedDataParallel).parameters
_NO_FORWARD_BUFFER_SYNC = {"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS else \
    {"broadcast_buffers": False}


class DDPEngine:
    """Plain PyTorch: DistributedDataParallel when there is more than one rank."""

    name = "ddp"

    def __init__(self, cfg: EngineConfig, model: nn.Module, optim_cfg: OptimConfig, lr: float,
                 info: DistInfo, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.module = prepare_model(model, cfg, device, info.distributed)
        self.optimizer = build_optimizer(self.module, optim_cfg, lr)
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        wrapped: nn.Module = self.module
        if info.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # No broadcast of BN buffers before every forward (`BufferSync` does it where they are read), and
            # gradients that live in DDP's buckets instead of being copied there.
            ddp = nn.parallel.DistributedDataParallel(self.module, device_ids=ids, gradient_as_bucket_view=True,
                                                      **_NO_FORWARD_BUFFER_SYNC)
            if cfg.reduce_dtype == "bf16":
                ddp.register_comm_hook(None, _bf16_reduce)
            wrapped = ddp
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.buffers = BufferSync(self.module, info.distributed)
        self._buckets_settled = not info.distributed

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the loss and the number of top-1 hits (both detached)."""
        self.forward.train()
        if not self._buckets_settled:
            self._settle_buckets(images)
        with self._autocast():
            logits = self.forward(self._format(images))
            loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.buffers.mark_changed()
        return loss.detach(), top1_hits(logits, labels)

    def before_evaluation(self) -> None:
        """What every rank must do together before an evaluation (the buffer sync's broadcasts), called by every
        rank before the evaluation's loop, which a stop signal may make one rank leave before its first batch."""
        self.buffers.sync()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        # The unwrapped module: evaluation needs no gradient synchronisation.
        self.buffers.sync()
        self.module.eval()
        with self._autocast():
            return self.module(self._format(images)).float()

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def save(self, staging: Path, extra: dict[str, Any], is_primary: bool, writer: FileWriter) -> None:
        self.buffers.sync()  # collective: before the write, which may fail on this rank alone
        if is_primary:
            writer.submit("state.pt", {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                **extra,
            })

    def load(self, checkpoint: Path, saved_world_size: int) -> dict[str, Any]:
        # Weights, optimizer and scaler are whole on every rank: any world size can continue from them. Read once,
        # by the primary, and broadcast: 64 ranks reading the same 500 MB from a shared file system would not be.
        state = from_primary(lambda: load_state(checkpoint / "state.pt"))
        self.module.load_state_dict(state.pop("model"))
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scaler.load_state_dict(state.pop("scaler"))
        return state

    def _settle_buckets(self, images: torch.Tensor) -> None:
        """One throw-away forward and backward, so that every real step reduces gradients in one layout.

        DDP reduces its first backward in one bucket in parameter order, then re-buckets by the order in
        which gradients became ready. A resumed run's first step would then sum its gradients laid out
        differently from the uninterrupted run's same step; with more than 2 ranks a float sum depends
        on where an element sits in the reduced buffer (the ring starts each chunk at another rank), so
        the resumed run would leave the uninterrupted one by rounding. After this pass DDP has
        re-bucketed before any real step, in every run. It changes nothing else: the gradients are
        dropped, no optimizer step is taken and BN's running statistics are put back.
        """
        with bn_statistics_kept(self.module), self._autocast():
            self.forward(self._format(torch.zeros_like(images))).float().sum().backward()
        self.optimizer.zero_grad(set_to_none=True)
        self._buckets_settled = True

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else images


def _bf16_reduce(state: Any, bucket):  # no return annotation: DDP would check it, and here it is a string
    """A DDP communication hook: a bucket of gradients averaged in bf16 (half the traffic), written back in fp32.

    torch's own `bf16_compress_hook` does the same but is refused on anything but NCCL/XCCL; this one also
    runs over gloo, so the CPU tests exercise the path a GPU job takes."""

    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(dist.get_world_size())
    reduced = dist.all_reduce(compressed, async_op=True).get_future()

    def write_back(future) -> torch.Tensor:
        buffer.copy_(future.value()[0])
        return buffer

    return reduced.then(write_back)

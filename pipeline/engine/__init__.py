"""DDP and DeepSpeed behind one small interface: step, set the lr, evaluate, save, load.

    engine = build_engine(cfg.engine, model, cfg.optim, lr, info, device, micro_batch)
    loss, correct = engine.train_step(images, labels)   # forward, backward, optimizer step
    engine.set_lr(schedule.lr(step))
    engine.before_evaluation()                  # every rank, before an evaluation's loop (collective)
    logits = engine.predict(images)             # eval mode, no grad
    engine.save(staging_dir, extra, is_primary, writer)   # this rank's files, submitted to a FileWriter
    extra = engine.load(checkpoint_dir, saved_world_size)

One recipe under both engines: weights, BN and the optimizer in fp32, bf16 through autocast (convolutions
and the classifier in bf16), gradients averaged in fp32 unless `engine.reduce_dtype=bf16`. DDP: autocast, a
gradient scaler for fp16, gradients reduced in 25 MB buckets during backward. DeepSpeed: its config is
generated from the `engine` section (ZeRO stage, DeepSpeed's `torch_autocast` mode for bf16, its own fp16
mode, ZeRO's reduction overlapped with backward) and it writes its own checkpoint format. Both: optional
torch.compile, SyncBN and activation checkpointing of every residual block; channels_last (DeepSpeed: the
inputs only).

`save` does its collectives (BN buffers, DeepSpeed's own barriers) and hands its files to a
`pipeline.checkpoint.background.FileWriter`, which writes them at once or snapshots them for its thread, and keeps a
failure (a full disk) for the save to raise on every rank together (`CheckpointStore.complete_save`: one
all-gather instead of a hang).

The engines live in `ddp` and `deepspeed_engine`, what they share in `common`; `deepspeed_files` routes
DeepSpeed's checkpoint files through ours, `optimizer` is the paper's SGD and `weights` reads a checkpoint's
weights alone.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config.schema import EngineConfig, OptimConfig
from pipeline.dist import DistInfo
from pipeline.engine.ddp import DDPEngine
from pipeline.engine.deepspeed_engine import DeepSpeedEngine


def build_engine(cfg: EngineConfig, model: nn.Module, optim_cfg: OptimConfig, lr: float, info: DistInfo,
                 device: torch.device, micro_batch: int):
    if cfg.name == "deepspeed":
        return DeepSpeedEngine(cfg, model, optim_cfg, lr, info, device, micro_batch)
    return DDPEngine(cfg, model, optim_cfg, lr, info, device)

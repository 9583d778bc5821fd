"""DDP and DeepSpeed behind one small interface: step, set the lr, evaluate, save, load.

    engine = build_engine(cfg.engine, model, cfg.optim, lr, info, device, micro_batch)
    loss, correct = engine.train_step(images, labels)   # forward, backward, optimizer step
    engine.set_lr(schedule.lr(step))
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
`background_save.FileWriter`, which writes them at once or snapshots them for its thread, and keeps a
failure (a full disk) for the save to raise on every rank together (`CheckpointStore.complete_save`: one
all-gather instead of a hang).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.background_save import FileWriter
from pipeline.checkpoint import WorldSizeChangeError, load_state
from pipeline.config_schema import EngineConfig, OptimConfig
from pipeline.deepspeed_files import DurableCheckpointFiles
from pipeline.dist import DistInfo, from_primary
from pipeline.optim import build_optimizer, set_lr

DEEPSPEED_TAG = "deepspeed"  # the subdirectory DeepSpeed writes its files into, inside our checkpoint
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    back as it found them (see `_bn_statistics_kept`), for both engines.
    """
    blocks = list(model.blocks()) if hasattr(model, "blocks") else []
    if not blocks:
        raise ValueError("activation checkpointing needs a model with residual blocks (model.blocks())")
    for block in blocks:
        block.forward = functools.partial(_checkpointed_forward, block, block.forward)


def _checkpointed_forward(block: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint

    if not torch.is_grad_enabled():
        return forward(x)
    return checkpoint(forward, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _bn_statistics_kept(block)))


@contextlib.contextmanager
def _bn_statistics_kept(module: nn.Module):
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
        import torch.distributed as dist

        for buffer in self.module.buffers():
            dist.broadcast(buffer, src=0)
        self.changed = False


class DDPEngine:
    """Plain PyTorch: DistributedDataParallel when there is more than one rank."""

    name = "ddp"

    def __init__(self, cfg: EngineConfig, model: nn.Module, optim_cfg: OptimConfig, lr: float,
                 info: DistInfo, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.module = prepare_model(model, cfg, device, info.distributed)
        self.optimizer = build_optimizer(self.module, optim_cfg, lr)
        self.autocast_dtype = _DTYPES[cfg.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        wrapped: nn.Module = self.module
        if info.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # No broadcast of BN buffers before every forward (`BufferSync` does it where they are read), and
            # gradients that live in DDP's buckets instead of being copied there.
            ddp = nn.parallel.DistributedDataParallel(self.module, device_ids=ids, broadcast_buffers=False,
                                                      gradient_as_bucket_view=True)
            if cfg.reduce_dtype == "bf16":
                ddp.register_comm_hook(None, _bf16_reduce)
            wrapped = ddp
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.buffers = BufferSync(self.module, info.distributed)
        self._buckets_settled = not info.distributed

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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
        return loss.detach(), _hits(logits, labels)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        # The unwrapped module: evaluation needs no gradient synchronisation.
        self.buffers.sync()
        self.module.eval()
        with self._autocast():
            return self.module(self._format(images)).float()

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def save(self, staging: Path, extra: Dict[str, Any], is_primary: bool, writer: FileWriter) -> None:
        self.buffers.sync()  # collective: before the write, which may fail on this rank alone
        if is_primary:
            writer.submit("state.pt", {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                **extra,
            })

    def load(self, checkpoint: Path, saved_world_size: int) -> Dict[str, Any]:
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
        with _bn_statistics_kept(self.module), self._autocast():
            self.forward(self._format(torch.zeros_like(images))).float().sum().backward()
        self.optimizer.zero_grad(set_to_none=True)
        self._buckets_settled = True

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else images


class DeepSpeedEngine:
    """DeepSpeed with ZeRO stage 0/1/2; our SGD is handed to it, its config generated from ours."""

    name = "deepspeed"

    def __init__(self, cfg: EngineConfig, model: nn.Module, optim_cfg: OptimConfig, lr: float,
                 info: DistInfo, device: torch.device, micro_batch: int) -> None:
        import deepspeed  # heavy: only when this engine is chosen

        self.cfg, self.device = cfg, device
        # channels_last applies to the inputs only (`_format`): DeepSpeed views every parameter as bytes to
        # broadcast it, which a channels_last weight refuses, and its bf16/ZeRO optimizers flatten the
        # parameters into contiguous buffers anyway. A channels_last input still runs the convs channels_last.
        module = prepare_model(model, dataclasses.replace(cfg, channels_last=False), device, info.distributed)
        optimizer = build_optimizer(module, optim_cfg, lr)
        self.ds_config = deepspeed_config(cfg, micro_batch, info.world_size)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
        if cfg.compile:
            self.engine.compile()  # torch.compile of the module, inside DeepSpeed's forward and hooks
        self.files = DurableCheckpointFiles()
        self.engine.checkpoint_engine = self.files  # every file DeepSpeed saves or loads goes through it
        copy_scripts = self.engine._copy_recovery_script  # the one write it does itself (rank 0, ZeRO)
        self.engine._copy_recovery_script = lambda path: self.files.deferring_errors(copy_scripts, path)
        self.module = self.engine.module
        # DeepSpeed's fp16 mode casts the module, not its inputs; under bf16 autocast casts what it computes.
        self.input_dtype = torch.float16 if cfg.precision == "fp16" else None
        self.buffers = BufferSync(self.module, info.distributed)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.engine.train()
        logits = self.engine(self._format(images))
        loss = F.cross_entropy(logits.float(), labels)
        self.engine.backward(loss)
        self.engine.step()
        self.buffers.mark_changed()
        return loss.detach(), _hits(logits, labels)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.buffers.sync()
        self.engine.eval()
        return self.engine(self._format(images)).float()

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def save(self, staging: Path, extra: Dict[str, Any], is_primary: bool, writer: FileWriter) -> None:
        self.buffers.sync()
        # Every rank takes part: with ZeRO each holds a slice of the optimizer state. DeepSpeed's files go to
        # `writer` through `self.files`; a failure is kept by the writer, never raised inside DeepSpeed's barriers.
        with self.files.writing_to(writer):
            self.engine.save_checkpoint(str(staging), tag=DEEPSPEED_TAG, client_state={}, save_latest=False)
        if is_primary:
            writer.submit("state.pt", extra)

    def load(self, checkpoint: Path, saved_world_size: int) -> Dict[str, Any]:
        world_size = self.engine.dp_world_size
        if self.cfg.zero_stage and saved_world_size != world_size:
            raise WorldSizeChangeError(
                f"{checkpoint} was written by {saved_world_size} DeepSpeed ranks with ZeRO stage "
                f"{self.cfg.zero_stage}, which splits the optimizer state (SGD momentum) into one slice per "
                f"rank; DeepSpeed cannot re-split it for {world_size} ranks (its universal checkpoint "
                f"converts Adam's state, not SGD's momentum). Resume with {saved_world_size} processes, or "
                f"checkpoint with engine.zero_stage=0 (the whole optimizer state in one file) or engine.name=ddp "
                f"when the world size may change")
        path, _ = self.engine.load_checkpoint(str(checkpoint), tag=DEEPSPEED_TAG, load_module_strict=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {checkpoint}")
        return from_primary(lambda: load_state(checkpoint / "state.pt"))

    def _format(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_dtype is not None:
            images = images.to(self.input_dtype)
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else images


def load_weights(checkpoint: Path) -> Dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint of either engine (for evaluation: no optimizer needed)."""
    ours = load_state(checkpoint / "state.pt") if (checkpoint / "state.pt").exists() else {}
    if "model" in ours:  # DDPEngine.save
        return ours["model"]
    deepspeed_file = checkpoint / DEEPSPEED_TAG / "mp_rank_00_model_states.pt"
    if deepspeed_file.exists():  # DeepSpeedEngine.save: DeepSpeed's own layout
        return load_state(deepspeed_file)["module"]
    raise FileNotFoundError(f"{checkpoint}: no model weights (neither state.pt with 'model' nor {deepspeed_file.name})")


def _bf16_reduce(state: Any, bucket):  # no return annotation: DDP would check it, and here it is a string
    """A DDP communication hook: a bucket of gradients averaged in bf16 (half the traffic), written back in fp32.

    torch's own `bf16_compress_hook` does the same but is refused on anything but NCCL/XCCL; this one also
    runs over gloo, so the CPU tests exercise the path a GPU job takes."""
    import torch.distributed as dist

    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(dist.get_world_size())
    reduced = dist.all_reduce(compressed, async_op=True).get_future()

    def write_back(future) -> torch.Tensor:
        buffer.copy_(future.value()[0])
        return buffer

    return reduced.then(write_back)


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).sum()


# Elements per ZeRO reduce/all-gather bucket: 20 MB of fp32 (DDP's buckets are 25 MB), a few buckets for a
# 25-60M parameter ResNet, so reduction overlaps backward. DeepSpeed's default (5e8) exceeds the whole net.
ZERO_BUCKET_ELEMENTS = 5_000_000


def deepspeed_config(cfg: EngineConfig, micro_batch: int, world_size: int) -> Dict[str, Any]:
    """DeepSpeed's JSON config, derived from the `engine` section (no separate file to keep in sync)."""
    precision: Dict[str, Any] = {}
    if cfg.precision == "bf16":
        # DeepSpeed's `bf16` mode would cast the weights and BN (with `buffer_dtype`, its running statistics)
        # to bf16 and reduce bf16 gradients. Its `torch_autocast` mode is DDP's recipe: fp32 weights, BN and
        # optimizer, bf16 compute; gradients are reduced in fp32 unless `reduce_dtype=bf16`: ZeRO 1/2 then
        # reduce the layers named "lower precision safe" (DeepSpeed's default list) in bf16, ZeRO 0 whatever
        # `communication_data_type` says.
        safe = [] if cfg.reduce_dtype == "fp32" else ["torch.nn.modules.conv.Conv2d", "torch.nn.modules.linear.Linear"]
        precision = {"torch_autocast": {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": safe}}
        if cfg.reduce_dtype == "bf16" and not cfg.zero_stage:
            precision["communication_data_type"] = "bf16"
    elif cfg.precision == "fp16":
        # DeepSpeed's fp16 mode (dynamic loss scaling): the module in fp16, BN's statistics with it (its
        # kernels need them in the weights' dtype).
        precision = {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16},
                     "data_types": {"buffer_dtype": "fp16"}}
    zero: Dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage:
        zero.update(overlap_comm=True, reduce_bucket_size=ZERO_BUCKET_ELEMENTS,
                    allgather_bucket_size=ZERO_BUCKET_ELEMENTS)
    return {
        **precision,
        "train_micro_batch_size_per_gpu": micro_batch,
        "train_batch_size": micro_batch * world_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        # ZeRO partitions any torch optimizer's state; DeepSpeed asks to confirm for ones it has not listed.
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,  # our logger reports progress
        "wall_clock_breakdown": False,
    }


def build_engine(cfg: EngineConfig, model: nn.Module, optim_cfg: OptimConfig, lr: float, info: DistInfo,
                 device: torch.device, micro_batch: int):
    if cfg.name == "deepspeed":
        return DeepSpeedEngine(cfg, model, optim_cfg, lr, info, device, micro_batch)
    return DDPEngine(cfg, model, optim_cfg, lr, info, device)


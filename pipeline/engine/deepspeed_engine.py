"""The DeepSpeed engine: ZeRO stage 0/1/2 over our SGD, its JSON config generated from the `engine` section, its
checkpoint files written and read through ours (`deepspeed_files`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint.background import FileWriter
from pipeline.checkpoint.store import WorldSizeChangeError, load_state
from pipeline.config.schema import EngineConfig, OptimConfig
from pipeline.dist import DistInfo, from_primary
from pipeline.dist.exit_codes import USAGE
from pipeline.engine.common import BufferSync, prepare_model, top1_hits
from pipeline.engine.deepspeed_files import DurableCheckpointFiles
from pipeline.engine.optimizer import build_optimizer, set_lr

DEEPSPEED_TAG = "deepspeed"  # the subdirectory DeepSpeed writes its files into, inside our checkpoint
# The first DeepSpeed with the `torch_autocast` section bf16 runs are configured with; an older one ignores the
# section and trains in fp32 while the run says bf16.
OLDEST_DEEPSPEED = (0, 17, 2)


class DeepSpeedTooOld(RuntimeError):
    exit_code = USAGE


class DeepSpeedEngine:
    """DeepSpeed with ZeRO stage 0/1/2; our SGD is handed to it, its config generated from ours."""

    name = "deepspeed"

    def __init__(self, cfg: EngineConfig, model: nn.Module, optim_cfg: OptimConfig, lr: float,
                 info: DistInfo, device: torch.device, micro_batch: int) -> None:
        import deepspeed  # heavy: only when this engine is chosen

        check_deepspeed_version(deepspeed.__version__)
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

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.engine.train()
        logits = self.engine(self._format(images))
        loss = F.cross_entropy(logits.float(), labels)
        self.engine.backward(loss)
        self.engine.step()
        self.buffers.mark_changed()
        return loss.detach(), top1_hits(logits, labels)

    def before_evaluation(self) -> None:
        """What every rank must do together before an evaluation (the buffer sync's broadcasts), called by every
        rank before the evaluation's loop, which a stop signal may make one rank leave before its first batch."""
        self.buffers.sync()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.buffers.sync()
        self.engine.eval()
        return self.engine(self._format(images)).float()

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def save(self, staging: Path, extra: dict[str, Any], is_primary: bool, writer: FileWriter) -> None:
        self.buffers.sync()
        # Every rank takes part: with ZeRO each holds a slice of the optimizer state. DeepSpeed's files go to
        # `writer` through `self.files`; a failure is kept by the writer, never raised inside DeepSpeed's barriers.
        with self.files.writing_to(writer):
            self.engine.save_checkpoint(str(staging), tag=DEEPSPEED_TAG, client_state={}, save_latest=False)
        if is_primary:
            writer.submit("state.pt", extra)

    def load(self, checkpoint: Path, saved_world_size: int) -> dict[str, Any]:
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


# Elements per ZeRO reduce/all-gather bucket: 20 MB of fp32 (DDP's buckets are 25 MB), a few buckets for a
# 25-60M parameter ResNet, so reduction overlaps backward. DeepSpeed's default (5e8) exceeds the whole net.
ZERO_BUCKET_ELEMENTS = 5_000_000


def deepspeed_config(cfg: EngineConfig, micro_batch: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed's JSON config, derived from the `engine` section (no separate file to keep in sync)."""
    precision: dict[str, Any] = {}
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
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage:
        zero.update(overlap_comm=True, reduce_bucket_size=ZERO_BUCKET_ELEMENTS,
                    allgather_bucket_size=ZERO_BUCKET_ELEMENTS)
        if _knows_zero_key("compute_grad_norm"):
            # The global gradient norm feeds clipping alone (off: the paper clips nothing), and checking it for
            # inf/NaN reads it on the host every step (`bool(tensor.any())`), a sync the loop never makes itself.
            zero["compute_grad_norm"] = False
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


def _knows_zero_key(key: str) -> bool:
    """Whether this DeepSpeed's `zero_optimization` section has `key` (its config refuses unknown keys)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # noqa: PLC0415 - heavy: DeepSpeed's runs only

    return key in DeepSpeedZeroConfig.model_fields


def check_deepspeed_version(version: str) -> None:
    """Refuse a DeepSpeed older than OLDEST_DEEPSPEED in one line (exit 2), naming the installed version."""
    release = tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])
    if release < OLDEST_DEEPSPEED:
        oldest = ".".join(map(str, OLDEST_DEEPSPEED))
        raise DeepSpeedTooOld(f"DeepSpeed {version} is older than {oldest}, the first release with the torch_autocast "
                              f"section this project's bf16 runs use (an older one trains them in fp32 without a "
                              f"word): pip install 'deepspeed>={oldest}', or engine.name=ddp")

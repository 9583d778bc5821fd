"""What each GPU gets of a run's global batch, and whether the recipe still holds at that share.

The paper's recipes were made for a number of images per GPU (`data.recipe_batch_per_gpu`: ImageNet 256
over 8 GPUs, 32 each; CIFAR 128 over 2, 64 each), and BN normalises over each GPU's part of the batch. The
same global batch over 32 GPUs leaves 8 images per GPU: BN statistics over 8 images (another regulariser
than the paper's), and steps so small that kernel launches and the gradient all-reduce bound them. The
other way, a large global batch (the large-batch preset: 256 per GPU) takes BN statistics over 256 unless
`model.bn_group_size` ("ghost BN") splits each GPU's batch into groups of the paper's size.

Light on purpose (no torch): `launch` asks it before anything is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError, ExperimentConfig

LARGE_BATCH_PRESET = "configs/imagenet/large_batch/"


@dataclass(frozen=True)
class GpuShare:
    """One run's global batch spread over its GPUs (ranks: on CPU, processes, and `unit` says so: a CPU job told
    "128 images per GPU" was asked to believe in GPUs it does not have)."""

    global_batch: int
    gpus: int
    bn_group_size: int  # 0: BN over the GPU's whole batch
    recipe: int  # images per GPU the recipe was made for
    unit: str = "GPU"  # what a rank is: "GPU", or "process" on CPU

    def count(self, n: int) -> str:
        """`n` ranks in words: "1 GPU", "32 GPUs", "2 processes"."""
        return f"{n} {self.unit}" if n == 1 else f"{n} {'processes' if self.unit == 'process' else self.unit + 's'}"

    @property
    def images(self) -> float:
        return self.global_batch / self.gpus

    @property
    def bn_batch(self) -> float:
        """Images each BN statistic is taken over in training."""
        if 0 < self.bn_group_size < self.images:
            return float(self.bn_group_size)
        return self.images

    def describe(self) -> str:
        bn = f", BN statistics over groups of {self.bn_group_size:g}" if self.bn_batch != self.images else ""
        return f"{self.images:g} images per {self.unit} ({self.global_batch} over {self.gpus}){bn}"

    def below_recipe(self) -> str | None:
        """A warning when a GPU (process) gets fewer images than the recipe was made for, naming the ways out."""
        if self.images >= self.recipe:
            return None
        fewer = self.global_batch // self.recipe
        return (f"data.batch_size {self.global_batch} over {self.count(self.gpus)} is {self.images:g} images per "
                f"{self.unit}, below the {self.recipe} the recipe was made for (data.recipe_batch_per_gpu): BN "
                f"statistics come from {self.bn_batch:g} images instead of {self.recipe}, and steps this small are "
                f"bound by kernel launches and the all-reduce. Instead: {self.count(fewer)} per run ({self.recipe} "
                f"each) with more runs at once (--array-parallelism), or the large-batch preset "
                f"({LARGE_BATCH_PRESET}), which keeps BN over {self.recipe} with model.bn_group_size")


def gpu_share(cfg: ExperimentConfig, gpus: int, on_gpus: bool = True) -> GpuShare:
    """The share of each of `gpus` ranks; `on_gpus` False: the ranks are CPU processes (`--gpus-per-node 0`)."""
    return GpuShare(cfg.data.batch_size, max(1, gpus), cfg.model.bn_group_size, cfg.data.recipe_batch_per_gpu,
                    "GPU" if on_gpus else "process")


def check_bn_groups(cfg: ExperimentConfig, gpus: int) -> None:
    """Refuse a ghost-BN setting that cannot be what was meant."""
    group, share = cfg.model.bn_group_size, gpu_share(cfg, gpus)
    if not group:
        return
    if cfg.engine.sync_bn:
        raise ConfigError(f"model.bn_group_size={group} and engine.sync_bn=true ask for BN statistics over a group "
                          "of one GPU's batch and over every GPU's at once: choose one")
    if share.images % group and share.images > group:
        raise ConfigError(f"model.bn_group_size ({group}) does not divide the {share.images:g} images per GPU "
                          f"(data.batch_size {cfg.data.batch_size} over {share.gpus}): choose a divisor")

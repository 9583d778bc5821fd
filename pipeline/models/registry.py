"""Names of the paper's networks and a builder for each.

ImageNet: resnet18/34/50/101/152, plain18/34. CIFAR: cifar_resnet<6n+2> and cifar_plain<6n+2> for any n
(the paper's depths are registered so they are listed; any other 6n+2 depth builds on request).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `import pipeline.models` free of torch until a model is built
    from torch import nn

    from pipeline.config.schema import ModelConfig

IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110, 1202)
CIFAR_PLAIN_DEPTHS = (20, 32, 44, 56)
_CIFAR_NAME = re.compile(r"^cifar_(resnet|plain)(\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of a network before building it."""

    name: str
    family: str  # "imagenet" | "cifar"
    depth: int
    residual: bool
    default_shortcut: str | None  # None for plain nets
    num_classes: int  # native class count
    resolution: int  # native input side (224 ImageNet, 32 CIFAR)


def _imagenet_spec(depth: int, residual: bool) -> ModelSpec:
    block, _ = IMAGENET_STAGES[depth]
    shortcut = ("A" if block == "basic" else "B") if residual else None
    name = f"{'resnet' if residual else 'plain'}{depth}"
    return ModelSpec(name, "imagenet", depth, residual, shortcut, 1000, 224)


def _cifar_spec(depth: int, residual: bool) -> ModelSpec:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR nets have depth 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
    name = f"cifar_{'resnet' if residual else 'plain'}{depth}"
    return ModelSpec(name, "cifar", depth, residual, "A" if residual else None, 10, 32)


def _registered() -> dict[str, ModelSpec]:
    specs = [_imagenet_spec(d, True) for d in IMAGENET_STAGES]
    specs += [_imagenet_spec(d, False) for d in (18, 34)]
    specs += [_cifar_spec(d, True) for d in CIFAR_RESNET_DEPTHS]
    specs += [_cifar_spec(d, False) for d in CIFAR_PLAIN_DEPTHS]
    return {s.name: s for s in specs}


REGISTRY: dict[str, ModelSpec] = _registered()


def list_models() -> list[ModelSpec]:
    return list(REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered name, or of any `cifar_resnet<6n+2>` / `cifar_plain<6n+2>`."""
    if name in REGISTRY:
        return REGISTRY[name]
    match = _CIFAR_NAME.match(name)
    if match:
        return _cifar_spec(int(match.group(2)), residual=match.group(1) == "resnet")
    raise KeyError(
        f"unknown model {name!r}; registered: {', '.join(REGISTRY)} "
        "(and cifar_resnet<6n+2> / cifar_plain<6n+2> for any n)"
    )


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network a `model` config section describes."""
    net = build(
        cfg.name,
        num_classes=cfg.num_classes,
        shortcut=cfg.shortcut,
        bottleneck_stride=cfg.bottleneck_stride,
        zero_init_residual=cfg.zero_init_residual,
    )
    if cfg.bn_group_size:
        from pipeline.models.ghost_bn import use_ghost_batchnorm  # noqa: PLC0415 - torch: names are read without it

        use_ghost_batchnorm(net, cfg.bn_group_size)
    return net


def build(
    name: str,
    num_classes: int | None = None,
    shortcut: str = "default",
    bottleneck_stride: str = "1x1",
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a network by name; `shortcut` is "default" (the paper's choice), "A", "B" or "C"."""
    from pipeline.models.blocks import BasicBlock, Bottleneck  # noqa: PLC0415 - torch: names are read without it
    from pipeline.models.resnet import CifarResNet, ImageNetResNet  # noqa: PLC0415 - torch: names are read without it

    spec = get_spec(name)
    option = _shortcut_option(spec, shortcut)
    classes = num_classes or spec.num_classes
    if spec.family == "cifar":
        if option not in ("A", None):
            raise ValueError(f"{name}: CIFAR nets use option A shortcuts (the paper's), got {shortcut!r}")
        return CifarResNet((spec.depth - 2) // 6, classes, option, zero_init_residual)
    kind, stages = IMAGENET_STAGES[spec.depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    return ImageNetResNet(block, stages, classes, option, bottleneck_stride, zero_init_residual)


def _shortcut_option(spec: ModelSpec, shortcut: str) -> str | None:
    if shortcut == "default":
        return spec.default_shortcut
    if not spec.residual:
        raise ValueError(f"{spec.name} is a plain net (no shortcuts); shortcut must be 'default', got {shortcut!r}")
    return shortcut


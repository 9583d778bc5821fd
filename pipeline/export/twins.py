"""Which of our nets torchvision (and timm, which uses the same names) builds too, and our weights' names in theirs.

torchvision's `resnet18/34/50/101/152` are our ImageNet ResNets with option B shortcuts (a projection where the
shape changes, the identity elsewhere) and, for the bottleneck nets, the stride on the 3x3 conv ("v1.5",
`model.bottleneck_stride=3x3`): the same layers in the same order, so the weights carry over by renaming alone.
The paper's own ResNet-50/101/152 (stride on the first 1x1), options A and C, the plain nets and the CIFAR nets
compute something else with their weights: they have no twin, and the safetensors and ONNX exports serve them.
"""

from __future__ import annotations

import re

import torch

from pipeline.models.registry import get_spec

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)


class NoTwin(ValueError):
    """The net has no torchvision twin; the message says why and what to export instead."""


def torchvision_name(architecture: dict) -> str:
    """The torchvision builder (`torchvision.models.<name>`) of the net `architecture` describes, or NoTwin."""
    name = architecture["name"]
    spec = get_spec(name)
    instead = "export it --to safetensors or --to onnx instead"
    if spec.family != "imagenet" or not spec.residual:
        kind = "a CIFAR net" if spec.family == "cifar" else "a plain net"
        raise NoTwin(f"{name} is {kind}: torchvision has no such architecture; {instead}")
    if architecture["shortcut"] != "B":
        raise NoTwin(f"{name} with option {architecture['shortcut']} shortcuts has no torchvision twin (torchvision's "
                     f"ResNets use option B: a projection only where the shape changes); {instead}")
    if spec.depth >= 50 and architecture["bottleneck_stride"] != "3x3":
        raise NoTwin(f"{name} with model.bottleneck_stride={architecture['bottleneck_stride']} (the paper's: the "
                     "stride on the first 1x1 conv) has no torchvision twin (torchvision's bottleneck strides on the "
                     f"3x3 conv, 'v1.5'); {instead}")
    return f"resnet{spec.depth}"


_STAGE = re.compile(r"^stages\.(\d+)\.(\d+)\.(.*)$")


def to_torchvision_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict with torchvision's names: stem.0/1 -> conv1/bn1, stages.i.j -> layer{i+1}.j, shortcut ->
    downsample; fc stays fc."""
    renamed = {}
    for key, value in weights.items():
        renamed[_torchvision_key(key)] = value
    return renamed


def _torchvision_key(key: str) -> str:
    if key.startswith("stem.0."):
        return "conv1." + key[len("stem.0."):]
    if key.startswith("stem.1."):
        return "bn1." + key[len("stem.1."):]
    match = _STAGE.match(key)
    if match:
        stage, block, rest = match.groups()
        return f"layer{int(stage) + 1}.{block}.{rest.replace('shortcut.', 'downsample.', 1)}"
    if key.startswith("fc."):
        return key
    raise KeyError(f"{key}: a weight that torchvision's ResNet has no place for")

"""Which nets torchvision builds too, and our weights under its names (that the renamed weights also compute
torchvision's logits is test_export.py's, on trained ResNet-18 and ResNet-50 and real images)."""

from __future__ import annotations

import pytest
import torch

from pipeline.export.twins import NoTwin, to_torchvision_names, torchvision_name
from pipeline.models import build


def _architecture(name: str, shortcut: str | None = "B", stride: str = "3x3") -> dict:
    return {"name": name, "num_classes": 7, "shortcut": shortcut, "bottleneck_stride": stride}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_every_depth_s_renamed_weights_are_exactly_torchvision_s_names_and_shapes(depth):
    import torchvision

    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        ours = build(f"resnet{depth}", num_classes=7, shortcut="B", bottleneck_stride="3x3")
        theirs = getattr(torchvision.models, torchvision_name(_architecture(f"resnet{depth}")))(num_classes=7)
    renamed = {k: tuple(v.shape) for k, v in to_torchvision_names(ours.state_dict()).items()}
    assert renamed == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("architecture,why", [
    (_architecture("resnet50", stride="1x1"), "model.bottleneck_stride=1x1"),
    (_architecture("resnet152", stride="1x1"), "model.bottleneck_stride=1x1"),
    (_architecture("resnet34", shortcut="A"), "option A shortcuts"),
    (_architecture("resnet18", shortcut="C"), "option C shortcuts"),
    (_architecture("plain34", shortcut=None), "plain34 is a plain net"),
    (_architecture("cifar_resnet20", shortcut="A"), "cifar_resnet20 is a CIFAR net"),
])
def test_the_nets_without_a_twin_are_named_with_the_reason_and_the_formats_that_serve(architecture, why):
    with pytest.raises(NoTwin) as refused:
        torchvision_name(architecture)
    message = str(refused.value)
    assert why in message and "--to safetensors or --to onnx" in message and "\n" not in message

"""Parameters and multiply-adds of a network, counted from the real module.

Multiply-adds come from torch's FlopCounterMode (which counts 2 FLOPs per multiply-add of the convs
and the FC layer, as Table 1 counts them) run on the meta device: shapes flow through the real
forward, no memory is allocated and no arithmetic is done, so even ResNet-152 counts instantly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.registry import ModelSpec, build, list_models


@dataclass(frozen=True)
class Complexity:
    name: str
    depth: int
    params: int
    macs: int  # multiply-adds of one forward pass at the native resolution


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(spec: ModelSpec) -> Complexity:
    with torch.device("meta"):
        model = build(spec.name)
        image = torch.empty(1, 3, spec.resolution, spec.resolution)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return Complexity(spec.name, spec.depth, count_params(model), counter.get_total_flops() // 2)


def model_table() -> List[dict]:
    """One row per registered model: name, depth, params, macs."""
    return [asdict(measure(spec)) for spec in list_models()]

"""Parameters and multiply-adds of a network, counted from the real module.

Multiply-adds come from torch's FlopCounterMode (which counts 2 FLOPs per multiply-add of the convs
and the FC layer, as Table 1 counts them) over one forward pass of one image through the real module.
The module is built on the meta device and given uninitialised CPU memory: no initialisation is computed,
and the forward runs torch's CPU kernels (the meta device's shape functions are Python, ~3x slower here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    model = model.to_empty(device="cpu").eval()  # what the weights hold does not change a count
    image = torch.zeros(1, 3, spec.resolution, spec.resolution)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return Complexity(spec.name, spec.depth, count_params(model), counter.get_total_flops() // 2)


def model_table() -> list[dict]:
    """One row per registered model: name, depth, params, macs."""
    return [asdict(measure(spec)) for spec in list_models()]

"""Counting host syncs: the tensor calls that make the host wait for the device (on a GPU) to read a value.

On the CPU nothing waits, but the calls are the same ones: counting them here says how often a GPU run
would stall its stream. Used by the evaluation tests (`benchmarks/scale_overheads.py` counts the same calls but
`__index__`, with a counter that also says where each call was made).

    with HostSyncs() as syncs:
        evaluate(...)
    syncs.total, syncs.by_call   # e.g. 2, {"tolist": 2}
"""

from __future__ import annotations

from collections import Counter

import torch

# Each reads a tensor's value on the host (`cpu`/`numpy` copy it there).
SYNCING_CALLS = ("item", "__int__", "__float__", "__bool__", "__index__", "tolist", "cpu", "numpy")


class HostSyncs:
    def __init__(self) -> None:
        self.by_call: Counter = Counter()
        self._originals: dict = {}

    @property
    def total(self) -> int:
        return sum(self.by_call.values())

    def __enter__(self) -> HostSyncs:
        for name in SYNCING_CALLS:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original
            setattr(torch.Tensor, name, self._counting(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals.clear()

    def _counting(self, name: str, original):
        def call(tensor, *args, **kwargs):
            self.by_call[name] += 1
            return original(tensor, *args, **kwargs)
        return call

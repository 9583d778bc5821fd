"""Fig. 7's layer responses: the std of each 3x3 layer's BN output over an evaluation, exact over any number of
ranks."""

from __future__ import annotations

import torch

from pipeline.dist import all_reduce_sum


class LayerResponses:
    """Fig. 7: the standard deviation of each 3x3 layer's response over the evaluation set.

    A layer's response is the output of its BN, before the nonlinearity or the residual addition (the
    paper's definition). Each 3x3 convolution is paired with the BatchNorm that follows it in
    registration order, which is how every model of `pipeline.models` is built. The std is over every
    value of the response (samples, channels and positions), from float64 sums reduced over ranks, so
    it is exact whatever the number of ranks.

        with LayerResponses(model) as responses:
            evaluate(predict, loader)
        stds = responses.result()   # {"layers": [...], "std": [...]}
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = _bn_after_3x3(model)
        if not self.layers:
            raise ValueError("layer responses: the model has no 3x3 convolution followed by BatchNorm")
        self.sums: list[torch.Tensor] = [torch.zeros(3, dtype=torch.float64) for _ in self.layers]
        self._hooks: list = []

    def __enter__(self) -> LayerResponses:
        for index, (_, bn) in enumerate(self.layers):
            self._hooks.append(bn.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _hook(self, index: int):
        def record(_module, _inputs, output: torch.Tensor) -> None:
            # Summed here, inside the hook: the stem's in-place ReLU overwrites the tensor right after.
            x = output.detach().double()
            # (count, sum, sum of squares), kept on the output's device: no host sync per layer.
            self.sums[index] = self.sums[index].to(x.device) + torch.stack(
                [torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device), x.sum(), x.square().sum()])
        return record

    def result(self) -> dict:
        totals = all_reduce_sum(torch.cat([s.cpu() for s in self.sums]).tolist())
        stds = []
        for i in range(len(self.layers)):
            n, s, ss = totals[3 * i: 3 * i + 3]
            if n == 0:
                raise RuntimeError("layer responses: no forward pass was recorded")
            mean = s / n
            stds.append(max(ss / n - mean * mean, 0.0) ** 0.5)
        return {"layers": [name for name, _ in self.layers], "std": stds}


def _bn_after_3x3(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name of the BN, BN) for every 3x3 convolution, in the order the layers are applied."""
    pairs, pending = [], None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            pending = name if module.kernel_size == (3, 3) else None
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and pending is not None:
            pairs.append((name, module))
            pending = None
    return pairs

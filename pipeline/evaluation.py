"""Exact top-1 / top-5 error over a whole split: every sample counted once, summed over ranks.

The evaluation protocols differ only in the views a loader yields for each sample (`pipeline.data`):
    center      images (B, C, H, W): one view, scored directly;
    tencrop     images (B, 10, C, H, W): the mean of the ten views' softmax scores (Table 3);
    multiscale  a list of (1, C, H_s, W_s), one per scale: the mean of the scales' softmax scores
                (the fully-convolutional evaluation of Table 4).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, List, Optional, Sequence, TextIO, Tuple, Union

import torch

from pipeline.dist import all_reduce_sum
from pipeline.metrics import format_duration

Views = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class EvalResult:
    samples: int
    top1_error: float  # percent
    top5_error: float  # percent

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def count_correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(top-1 hits, top-5 hits) of the batch, as a tensor on the scores' device: reading it would wait for the
    device, so the caller sums these where they are and reads the total once."""
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hits = top.eq(labels.view(-1, 1).to(top.device))
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])


def view_scores(predict: Callable[[torch.Tensor], torch.Tensor], images: Views) -> torch.Tensor:
    """Class scores per sample, (B, classes): logits for one view, the mean softmax over several."""
    if isinstance(images, (list, tuple)):  # multiscale: one whole image per scale
        return torch.stack([predict(view).float().softmax(dim=1) for view in images]).mean(dim=0)
    if images.dim() == 5:  # tencrop: (B, V, C, H, W) -> all views in one batch
        b, v = images.shape[:2]
        probs = predict(images.flatten(0, 1)).float().softmax(dim=1)
        return probs.view(b, v, -1).mean(dim=1)
    return predict(images)  # one view: the softmax would not change the ranking


class EvaluationInterrupted(RuntimeError):
    """A stop signal arrived during the evaluation; it was cut short on every rank and gives no result."""


def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[Tuple[Views, torch.Tensor]],
             should_stop: Optional[Callable[[], bool]] = None,
             progress: Optional[Callable[[int], None]] = None) -> EvalResult:
    """Run `predict` over this rank's batches, averaging views; the totals are summed over all ranks.

    `should_stop` is asked before each batch (a local flag, e.g. a signal this process received): a rank
    that stops leaves its loop at once, and since ranks may hold different numbers of batches, the ranks
    learn it from the one reduction they already do at the end; then every rank raises
    `EvaluationInterrupted`. So a signal cuts an evaluation short without a collective per batch.
    `progress` is told each batch's sample count once it is queued (an `EvalProgress`).

    No batch waits for the device: the hits are summed where they are computed and read once, after the
    last batch, so a GPU is never idle between batches while the host reads a count.
    """
    samples = 0
    hits: Optional[torch.Tensor] = None  # (top-1, top-5), on the device
    stopped = False
    for images, labels in batches:
        if should_stop is not None and should_stop():
            stopped = True
            break
        batch_hits = count_correct(view_scores(predict, images), labels)
        hits = batch_hits if hits is None else hits + batch_hits
        samples += labels.numel()
        if progress is not None:
            progress(labels.numel())
    top1, top5 = hits.tolist() if hits is not None else (0, 0)  # the one host sync
    samples_f, top1_f, top5_f, stopped_ranks = all_reduce_sum([samples, top1, top5, float(stopped)])
    if stopped_ranks:
        raise EvaluationInterrupted(f"evaluation stopped by a signal on {int(stopped_ranks)} rank(s)")
    if samples_f == 0:
        raise RuntimeError("evaluation saw no samples: is the evaluation split empty?")
    return EvalResult(
        samples=int(samples_f),
        top1_error=100.0 * (1 - top1_f / samples_f),
        top5_error=100.0 * (1 - top5_f / samples_f),
    )


class EvalProgress:
    """This rank's evaluation progress on stderr: batches done of total, this rank's images/s and ETA.

    On a terminal, a tqdm bar; otherwise (a SLURM log, a file) a line each `every_batches` batches (default:
    a tenth of them) or `every_s` seconds, whichever comes first, and one when done. Disabled (off the
    primary rank) it prints nothing. Used as a context manager, called with each batch's sample count:

        with EvalProgress(len(loader), enabled=info.is_primary, desc="center test") as progress:
            evaluate(predict, loader, progress=progress)
    """

    def __init__(self, total: Optional[int], enabled: bool = True, desc: str = "evaluation",
                 every_batches: Optional[int] = None, every_s: float = 30.0, stream: Optional[TextIO] = None) -> None:
        self.total, self.enabled, self.desc = total, enabled, desc
        self.stream = stream or sys.stderr
        if every_batches is None:
            every_batches = max(1, total // 10) if total else 10
        self.every_batches = every_batches
        self.every_s = every_s
        self.batches = self.images = self.batches_shown = 0
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", file=self.stream, dynamic_ncols=True)

    def __call__(self, images: int) -> None:
        if not self.enabled:
            return
        self.batches += 1
        self.images += images
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{self._rate(now)} img/s", refresh=False)
        elif self.batches % self.every_batches == 0 or now - self.last_line >= self.every_s:
            self._line(now)

    def __enter__(self) -> "EvalProgress":
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.batches != self.batches_shown:  # the last batch has no line yet
            self._line(time.perf_counter())

    def _rate(self, now: float) -> str:
        """Images per second, with decimals where there are few (multi-scale reads one image a batch)."""
        rate = self.images / max(now - self.start, 1e-9)
        return f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"

    def _line(self, now: float) -> None:
        self.last_line, self.batches_shown = now, self.batches
        done = f"{self.batches}/{self.total} batches ({self.batches / self.total:.0%})" if self.total else \
            f"{self.batches} batches"
        eta = ""
        if self.total and self.batches < self.total:
            eta = f", eta {format_duration((self.total - self.batches) * (now - self.start) / self.batches)}"
        print(f"{self.desc}: {done}, {self._rate(now)} img/s{eta}", file=self.stream, flush=True)


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
        self.sums: List[torch.Tensor] = [torch.zeros(3, dtype=torch.float64) for _ in self.layers]
        self._hooks: List = []

    def __enter__(self) -> "LayerResponses":
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


def _bn_after_3x3(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """(name of the BN, BN) for every 3x3 convolution, in the order the layers are applied."""
    pairs, pending = [], None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            pending = name if module.kernel_size == (3, 3) else None
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and pending is not None:
            pairs.append((name, module))
            pending = None
    return pairs

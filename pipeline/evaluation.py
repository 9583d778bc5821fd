"""Exact top-1 / top-5 error over a whole split: every sample counted once, summed over ranks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Tuple

import torch

from pipeline.dist import all_reduce_sum


@dataclass(frozen=True)
class EvalResult:
    samples: int
    top1_error: float  # percent
    top5_error: float  # percent

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[int, int]:
    """How many of the batch have the label first, and within the top five."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def evaluate(predict: Callable[[torch.Tensor], torch.Tensor],
             batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
    """Run `predict` over this rank's batches; the totals are summed over all ranks."""
    samples = top1 = top5 = 0
    for images, labels in batches:
        c1, c5 = count_correct(predict(images), labels)
        samples, top1, top5 = samples + labels.numel(), top1 + c1, top5 + c5
    samples_f, top1_f, top5_f = all_reduce_sum([samples, top1, top5])
    if samples_f == 0:
        raise RuntimeError("evaluation saw no samples: is the evaluation split empty?")
    return EvalResult(
        samples=int(samples_f),
        top1_error=100.0 * (1 - top1_f / samples_f),
        top5_error=100.0 * (1 - top5_f / samples_f),
    )

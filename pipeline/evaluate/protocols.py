"""Exact top-1 / top-5 error over a whole split: every sample counted once, summed over ranks.

The evaluation protocols differ only in the views a loader yields for each sample (`pipeline.data`):
    center      images (B, C, H, W): one view, scored directly;
    tencrop     images (B, 10, C, H, W): the mean of the ten views' softmax scores (Table 3);
    multiscale  a list of (1, C, H_s, W_s), one per scale: the mean of the scales' softmax scores
                (the fully-convolutional evaluation of Table 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from pipeline.dist import all_reduce_sum

Views = torch.Tensor | Sequence[torch.Tensor]


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


def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[Views, torch.Tensor]],
             should_stop: Callable[[], bool] | None = None,
             progress: Callable[[int], None] | None = None) -> EvalResult:
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
    hits: torch.Tensor | None = None  # (top-1, top-5), on the device
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

"""An export checks itself before it reports success: the exported artefact, run by the library that receives it,
against our net, on the same real images from the run's own evaluation split, in fp32.

Tolerance: the largest absolute difference between the two nets' logits must be at most 1e-4 times the largest
logit's magnitude (at least 1e-4). A renamed state dict gives the same operations and so the same logits (up to
the order of a few sums); ONNX Runtime's kernels differ from torch's in the last bits of fp32, about 1e-6 of the
logits' scale measured on ResNet-50: the margin is a hundredfold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.export.source import ExportSource

RELATIVE_TOLERANCE = 1e-4
CHECK_IMAGES = 16


@dataclass(frozen=True)
class CheckImages:
    views: torch.Tensor  # uint8 NHWC, the evaluation's centre views
    labels: torch.Tensor
    inputs: torch.Tensor  # float32 NCHW: the views as our evaluation normalises them
    logits: torch.Tensor  # our net's, on `inputs`


def check_images(source: ExportSource, count: int = CHECK_IMAGES) -> CheckImages:
    """The first `count` images of the run's evaluation split, their centre views, and our net's logits."""
    split = source.eval_split
    refs = split.sample_refs()[:count]
    views, labels = [], []
    for ref in refs:
        data, label = split.read_sample(ref)
        views.append(source.preprocess.views(data))
        labels.append(label)
    batch = torch.cat(views)
    inputs = source.preprocess.normalise(batch)
    with torch.no_grad():
        logits = source.model()(inputs)
    return CheckImages(batch, torch.tensor(labels), inputs, logits)


@dataclass(frozen=True)
class CheckResult:
    receiver: str  # the library that ran the export
    images: int
    split: str
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict:
        return {"receiver": self.receiver, "images": self.images, "split": self.split,
                "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "passed": self.passed}

    def line(self) -> str:
        verdict = "within" if self.passed else "OVER"
        return (f"{self.receiver} on {self.images} {self.split} images: largest logit difference "
                f"{self.max_abs_diff:.3g}, {verdict} the tolerance {self.tolerance:.3g}")


def compare(receiver: str, images: CheckImages, split: str, run: Callable[[CheckImages], torch.Tensor]) -> CheckResult:
    """Run the export (`run`) on the check images and measure its logits against ours."""
    theirs = torch.as_tensor(run(images)).float()
    ours = images.logits.float()
    if theirs.shape != ours.shape:
        raise ValueError(f"{receiver} gave logits of shape {tuple(theirs.shape)}, ours are {tuple(ours.shape)}")
    tolerance = RELATIVE_TOLERANCE * max(1.0, ours.abs().max().item())
    return CheckResult(receiver, len(ours), split, (theirs - ours).abs().max().item(), tolerance)

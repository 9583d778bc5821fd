"""`python -m pipeline.predict RUN_DIR|EXPORT_DIR IMAGE... [--protocol center|tencrop] [--checkpoint best|last|STEP]
[--top K] [--json] [data.* overrides]`

The classes a trained net sees in a few images: for each image, its top-K classes (name, and id where it differs)
with their softmax probabilities.

The net is a run directory's checkpoint (the best, i.e. the lowest validation error, where the checkpoints record
one, else the last; --checkpoint picks another) or an export folder written by `python -m pipeline.export` (it
holds model.json; one checkpoint, which the folder names). Each image is prepared as the run's evaluation
prepared its images: ImageNet-style nets take the shorter side resized, then the central square (center) or
Table 3's ten crops (tencrop: the four corners, the centre and their mirror images, scored by the mean of the
ten views' softmax, as `pipeline.evaluate` scores them); CIFAR-style nets take a 32x32 image as is, and any other
size with its shorter side resized to 32 and the central square (one view: center only). A run directory needs
its dataset (its mean image and class names): data.root=PATH where it has moved. It runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from pipeline.checkpoint.store import CheckpointDamaged, CheckpointStore
from pipeline.config import ConfigError
from pipeline.config.ranges import AT_LEAST_1
from pipeline.data import DatasetError
from pipeline.export import ExportError, load_export
from pipeline.export.files import ExportDir
from pipeline.export.preprocess import PROTOCOLS, Preprocess
from pipeline.export.source import open_source
from pipeline.run.layout import RunDir

PROTOCOL_ALIASES = {"ten_crop": "tencrop"}  # pipeline.evaluate's and the paper's spelling
_OVERRIDE = re.compile(r"^data\.\w+=")
IMAGES_PER_PASS = 32  # a few images in one pass of the net (far quicker than one by one); many, in bounded memory


class PredictError(ValueError):
    """What cannot be predicted: a path that holds no net, an image that cannot be read; the message names it."""

    exit_code = 2


@dataclass(frozen=True)
class PredictRequest:
    net: Path  # a run directory or an export folder
    images: list[Path]
    protocol: str = "center"
    checkpoint: str | None = None  # a run directory's: best, last or a step; None: the best, else the last
    top: int = 5
    as_json: bool = False
    overrides: list[str] = field(default_factory=list)  # data.* of a run directory (where its dataset lies)


@dataclass(frozen=True)
class Classifier:
    net: torch.nn.Module  # fp32, evaluation mode
    preprocess: Preprocess
    classes: list[dict]  # [{"index", "id", "name"}]
    source: dict  # what the net is: kind (run or export), path, architecture, checkpoint, step, chosen


def open_classifier(path: Path | str, checkpoint: str | None = None, overrides: list[str] | tuple = ()) -> Classifier:
    """The net of a run directory (its `checkpoint`: best, last or a step; default the best, else the last) or of an
    export folder, with the preprocessing of the run's evaluation and the class names."""
    path = Path(path)
    if ExportDir(path).is_export():
        if checkpoint is not None or overrides:
            given = "--checkpoint" if checkpoint is not None else overrides[0]
            raise PredictError(f"{path} is an export folder, which holds one checkpoint and its preprocessing: "
                               f"{given} is for a run directory")
        net, preprocess, description = load_export(path)
        origin = description.get("source", {})
        return Classifier(net, preprocess, description["classes"], {
            "kind": "export", "path": str(path.resolve()), "architecture": description["architecture"]["name"],
            "checkpoint": origin.get("checkpoint"), "step": origin.get("step"), "run_dir": origin.get("run_dir")})
    run = RunDir(path)
    if not run.config.is_file():
        raise PredictError(_not_a_net(path))
    chosen = checkpoint or ("best" if CheckpointStore(run.checkpoints).best() is not None else "last")
    try:
        source = open_source(path, chosen, overrides)
    except DatasetError as e:  # its first line names the file; the rest is the export's advice
        raise DatasetError(f"{str(e).splitlines()[0]}\nA run directory's net needs the run's dataset (its mean image "
                           "and class names): pass data.root=PATH where it now lies, or give an export "
                           "folder of the run instead") from None
    return Classifier(source.model(), source.preprocess, source.classes, {
        "kind": "run", "path": str(path.resolve()), "architecture": source.architecture["name"],
        "checkpoint": source.checkpoint.path.name, "step": source.checkpoint.step, "chosen": chosen,
        "val_top1_error": source.checkpoint.meta.get("val_top1_error")})


def _not_a_net(path: Path) -> str:
    if not path.is_dir():
        return (f"{path}: no such directory; give a run directory (it holds config.yaml) or an export folder "
                "(model.json)")
    exports = sorted(p.parent.name for p in path.glob("*/model.json"))
    inside = f"; it holds the export folders {', '.join(exports)}: give one of them" if exports else ""
    return f"{path}: neither a run directory (no config.yaml) nor an export folder (no model.json){inside}"


def read_views(preprocess: Preprocess, image: Path, protocol: str) -> torch.Tensor:
    """The image's uint8 (views, H, W, 3), or PredictError naming the file."""
    try:
        data = image.read_bytes()
    except OSError as e:
        raise PredictError(f"{image}: cannot read it: {e.strerror or e}") from None
    try:
        return preprocess.views(data, protocol)
    except UnidentifiedImageError:
        raise PredictError(f"{image}: not an image (PIL recognises no image format in it)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's ways of refusing a file
        raise PredictError(f"{image}: an image that cannot be decoded: {e}") from None


@torch.no_grad()
def class_probabilities(classifier: Classifier, views: list[torch.Tensor]) -> torch.Tensor:
    """(images, classes) probabilities, from each image's views (as many for each: the protocol's), in one pass:
    the softmax of one view; of several, the mean of their softmax (Table 3's ten-crop score, as
    `pipeline.evaluate.protocols.view_scores` computes it)."""
    logits = classifier.net(classifier.preprocess.normalise(torch.cat(views)))
    return logits.float().softmax(dim=1).view(len(views), views[0].shape[0], -1).mean(dim=1)


def top_classes(classifier: Classifier, probabilities: torch.Tensor, k: int) -> list[dict]:
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [{**classifier.classes[i], "probability": p} for p, i in zip(values.tolist(), indices.tolist())]


def predict(request: PredictRequest) -> dict:
    """Every image's top classes, with what net, checkpoint and protocol gave them. Raises before any prediction
    when the net, the protocol or an image cannot be used."""
    classifier = open_classifier(request.net, request.checkpoint, request.overrides)
    classifier.preprocess.geometry(request.protocol)  # a protocol the net has no views for: refused up front
    results = []
    for start in range(0, len(request.images), IMAGES_PER_PASS):
        images = request.images[start:start + IMAGES_PER_PASS]
        views = [read_views(classifier.preprocess, image, request.protocol) for image in images]
        for image, probabilities in zip(images, class_probabilities(classifier, views)):
            results.append({"image": str(image), "views": len(views[0]),
                            "top": top_classes(classifier, probabilities, request.top)})
    return {"net": classifier.source, "protocol": request.protocol,
            "preprocess": _views_text(classifier.preprocess, request.protocol), "predictions": results}


def _views_text(preprocess: Preprocess, protocol: str) -> str:
    if protocol == "tencrop":
        side = preprocess.input_size
        return (f"the RGB image resized so that its shorter side is {preprocess.resize_shorter}, then its four corner "
                f"and central {side}x{side} squares and their mirror images; the mean of the 10 views' softmax")
    return preprocess.to_json(None)["views"]


def _text(result: dict) -> str:
    net = result["net"]
    if net["kind"] == "run":
        chosen = {"best": "the best", "last": "the last"}.get(net["chosen"], f"--checkpoint {net['chosen']}")
        error = net.get("val_top1_error")
        chosen += f": {error:.2f}% top-1 validation error" if error is not None and net["chosen"] == "best" else ""
        lines = [f"net: {net['architecture']}, checkpoint {net['checkpoint']} ({chosen}) of the run {net['path']}"]
    else:
        lines = [f"net: {net['architecture']}, the export {net['path']} (checkpoint {net['checkpoint']} of the run "
                 f"{net['run_dir']})"]
    lines.append(f"protocol: {result['protocol']}: {result['preprocess']}")
    label = lambda c: c["name"] if c["id"] == c["name"] else f"{c['name']} ({c['id']})"
    width = max(len(label(c)) for prediction in result["predictions"] for c in prediction["top"])
    for prediction in result["predictions"]:
        lines.append(f"\n{prediction['image']}")
        for rank, c in enumerate(prediction["top"], 1):
            lines.append(f"  {rank}. {label(c):<{width}s} {100 * c['probability']:6.2f}%")
    return "\n".join(lines)


def _protocol(text: str) -> str:
    protocol = PROTOCOL_ALIASES.get(text, text)
    if protocol not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"{text!r}: {' or '.join(PROTOCOLS)} (or ten_crop)")
    return protocol


def parse(argv: list[str] | None = None) -> PredictRequest:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("net", type=Path, metavar="RUN_DIR|EXPORT_DIR",
                        help="a run directory (config.yaml, checkpoints/) or an export folder (model.json, "
                             "model.safetensors)")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (any format PIL reads); data.*=VALUE settings of a run directory among "
                             "them, e.g. data.root=/new/place/of/the/dataset")
    parser.add_argument("--protocol", type=_protocol, default="center",
                        help="center (one view) or tencrop (alias ten_crop; ImageNet-style nets only); default center")
    parser.add_argument("--checkpoint", help="a run directory's checkpoint: best (lowest validation error), last, or a "
                                             "step number (default: the best where the checkpoints record one, else "
                                             "the last)")
    parser.add_argument("--top", type=AT_LEAST_1.parse_int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of text")
    args = parser.parse_intermixed_args(argv)
    overrides = [a for a in args.images if _OVERRIDE.match(a)]
    images = [Path(a) for a in args.images if not _OVERRIDE.match(a)]
    if not images:
        parser.error("no image given")
    return PredictRequest(args.net, images, args.protocol, args.checkpoint, args.top, args.json, overrides)


def main(argv: list[str] | None = None) -> int:
    request = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        result = predict(request)
    except (PredictError, ExportError, ConfigError, DatasetError, FileNotFoundError, ValueError,
            CheckpointDamaged) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    print(json.dumps(result, indent=1) if request.as_json else _text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

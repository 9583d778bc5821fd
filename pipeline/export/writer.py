"""One export: a run's checkpoint written in the formats asked for, each checked in its receiving library, then
described in model.json. Nothing is reported as exported that did not pass its check: a failing format's file is
removed and the export raises, naming the difference."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.export import formats
from pipeline.export.check import CheckResult, check_images, compare
from pipeline.export.files import FILES, ExportDir, ExportError
from pipeline.export.source import ExportSource, open_source
from pipeline.export.twins import torchvision_name
from pipeline.run.layout import RunDir

log = logging.getLogger("pipeline.export")

FORMATS = tuple(FILES)  # safetensors, onnx, torchvision

_USE = {
    "safetensors": "python -m pipeline.predict {folder} IMAGE; in Python: net, preprocess, description = "
                   "pipeline.export.load_export('{folder}')",
    "onnx": "onnxruntime.InferenceSession('model.onnx').run(['logits'], {{'pixels': x}}), x the views as RGB 0-255 "
            "float32 NCHW (the normalisation is inside)",
    "torchvision": "net = torchvision.models.{twin}(num_classes={classes}); "
                   "net.load_state_dict(torch.load('torchvision.pth')); timm.create_model('{twin}', "
                   "num_classes={classes}) loads the same file",
}


@dataclass
class ExportReport:
    folder: Path
    step: int
    checks: dict[str, CheckResult] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def export_run(run_dir: Path | str, to: Sequence[str] = ("safetensors",), out: Path | str | None = None,
               checkpoint: str | None = None, overrides: Sequence[str] = (),
               source: ExportSource | None = None) -> ExportReport:
    """Export `run_dir`'s checkpoint (`checkpoint`: best, last or a step; default the best, else the last) in each
    format of `to` into `out` (default `<run>/export/step-<N>`), each checked before it is reported."""
    unknown = [f for f in to if f not in FORMATS]
    if unknown or not to:
        raise ExportError(f"--to {','.join(unknown) or '(none)'}: the formats are {', '.join(FORMATS)}")
    source = source or open_source(run_dir, checkpoint, overrides)
    for fmt in to:
        formats.require(fmt)
    if "torchvision" in to:
        torchvision_name(source.architecture)  # no twin: refused before anything is written
    folder = ExportDir(out if out is not None else RunDir(source.run_dir).export(source.checkpoint.step))
    previous = _previous(folder, source)
    folder.path.mkdir(parents=True, exist_ok=True)
    mean_image_file = None
    if source.preprocess.mean_image is not None:
        np.save(folder.mean_image, source.preprocess.mean_image)
        mean_image_file = folder.mean_image.name
    description = {**_describe(source, mean_image_file), **previous}
    # model.json first: the safetensors check rebuilds the net and its preprocessing from it, as a user would.
    folder.write(description)
    images = check_images(source)
    report = ExportReport(folder.path, source.checkpoint.step)
    for fmt in to:
        path = _WRITERS[fmt](source, folder)
        check = compare(_RECEIVERS[fmt], images, source.eval_split.name,
                        lambda batch, fmt=fmt: _RUNNERS[fmt](folder, source, batch))
        log.info("%s: %s", fmt, check.line())
        if not check.passed:
            path.unlink(missing_ok=True)
            raise ExportError(f"{path.name} failed its check, and was removed: {check.line()}")
        description["files"][fmt] = path.name
        description["checks"][fmt] = check.as_dict()
        description["use"][fmt] = _use(fmt, folder, source)
        report.checks[fmt], report.files[fmt] = check, path
        folder.write(description)
    return report


def _previous(folder: ExportDir, source: ExportSource) -> dict:
    """What the folder already holds of this checkpoint's export (its formats are kept), or ExportError if it holds
    another checkpoint's."""
    if not folder.path.exists() or not any(folder.path.iterdir()):
        return {"files": {}, "checks": {}, "use": {}}
    if not folder.is_export():
        raise ExportError(f"{folder.path} is a folder that holds other files: export into a new or empty folder")
    previous = folder.read()
    theirs, ours = previous.get("source", {}), source.provenance()
    if (theirs.get("run_dir"), theirs.get("step")) != (ours["run_dir"], ours["step"]):
        raise ExportError(f"{folder.path} holds the export of {theirs.get('run_dir')} step {theirs.get('step')}; "
                          "one folder holds one checkpoint: choose another --out")
    return {k: previous.get(k, {}) for k in ("files", "checks", "use")}


def _describe(source: ExportSource, mean_image_file: str | None) -> dict:
    return {"architecture": source.architecture, "preprocess": source.preprocess.to_json(mean_image_file),
            "classes": source.classes, "reported": source.reported(), "source": source.provenance(),
            "torch": torch.__version__}


def _use(fmt: str, folder: ExportDir, source: ExportSource) -> str:
    twin = torchvision_name(source.architecture) if fmt == "torchvision" else ""
    return _USE[fmt].format(folder=folder.path, twin=twin, classes=source.num_classes)


_WRITERS = {"safetensors": formats.write_safetensors, "onnx": formats.write_onnx,
            "torchvision": formats.write_torchvision}
_RECEIVERS = {"safetensors": "safetensors (the net rebuilt from model.json)", "onnx": "onnxruntime",
              "torchvision": "torchvision (strict load)"}
_RUNNERS = {
    "safetensors": lambda folder, source, images: formats.run_safetensors(folder, images),
    "onnx": lambda folder, source, images: formats.run_onnx(folder, images),
    "torchvision": lambda folder, source, images: formats.run_torchvision(folder, source.architecture, images),
}

"""The three formats: each writes its file into an export folder and runs it the way its receiving library does,
for the check (`pipeline.export.check`). The libraries are the `export` extra's (`pip install -e ".[export]"`),
imported only here and only when their format is asked for."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.export.check import CheckImages
from pipeline.export.files import ExportDir, ExportError
from pipeline.export.preprocess import Normalised, Preprocess
from pipeline.export.source import ExportSource, build_net
from pipeline.export.twins import to_torchvision_names, torchvision_name

NEEDS = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxscript", "onnxruntime"),
         "torchvision": ("torchvision",)}
ONNX_OPSET = 18


def require(fmt: str) -> None:
    """Each library `fmt` needs, imported, or one error naming what to install."""
    missing = [name for name in NEEDS[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--to {fmt} needs {', '.join(missing)}: pip install 'resnet-repro[export]' (or "
                          f"pip install {' '.join(missing)})")


# -- torchvision ---------------------------------------------------------------------------------------------

def write_torchvision(source: ExportSource, folder: ExportDir) -> Path:
    torchvision_name(source.architecture)  # NoTwin before anything is written
    path = folder.weights("torchvision")
    torch.save(to_torchvision_names(source.weights), path)
    return path


def run_torchvision(folder: ExportDir, architecture: dict, images: CheckImages) -> torch.Tensor:
    """torchvision's own net, its weights loaded strictly from the export, on our normalised inputs."""
    import torchvision  # noqa: PLC0415 - the export extra's, for this format only

    net = getattr(torchvision.models, torchvision_name(architecture))(num_classes=int(architecture["num_classes"]))
    net.load_state_dict(torch.load(folder.weights("torchvision"), weights_only=True), strict=True)
    with torch.no_grad():
        return net.eval()(images.inputs)


# -- safetensors ---------------------------------------------------------------------------------------------

def write_safetensors(source: ExportSource, folder: ExportDir) -> Path:
    from safetensors.torch import save_file  # noqa: PLC0415 - the export extra's, for this format only

    path = folder.weights("safetensors")
    tensors = {k: v.detach().contiguous().cpu() for k, v in source.weights.items()}
    # The architecture rides in the file's metadata too, so that the weights alone still say what they are.
    save_file(tensors, str(path), metadata={"format": "pt", "architecture": json.dumps(source.architecture)})
    return path


def load_safetensors(folder: ExportDir, description: dict) -> torch.nn.Module:
    """Our net rebuilt from model.json's architecture, its weights from model.safetensors (strict)."""
    from safetensors.torch import load_file  # noqa: PLC0415 - the export extra's, for this format only

    net = build_net(description["architecture"])
    net.load_state_dict(load_file(str(folder.weights("safetensors"))), strict=True)
    return net.float().eval()


def run_safetensors(folder: ExportDir, images: CheckImages) -> torch.Tensor:
    """The export as a user rebuilds it: the net from model.json, the normalisation from its preprocessing."""
    description = folder.read()
    preprocess = Preprocess.from_json(description["preprocess"], folder.path)
    with torch.no_grad():
        return load_safetensors(folder, description)(preprocess.normalise(images.views))


# -- ONNX ----------------------------------------------------------------------------------------------------

def write_onnx(source: ExportSource, folder: ExportDir) -> Path:
    """The net with its normalisation in front (input: RGB pixels 0-255, float32 NCHW of the view's size), any
    batch size."""
    path = folder.weights("onnx")
    net = Normalised(source.model(), source.preprocess).eval()
    size = source.preprocess.input_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints each of its passes
        torch.onnx.export(net, (example,), str(path), input_names=["pixels"], output_names=["logits"],
                          dynamic_shapes={"pixels": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True,
                          verbose=False, external_data=False)
    return path


def run_onnx(folder: ExportDir, images: CheckImages) -> np.ndarray:
    import onnx  # noqa: PLC0415 - the export extra's, for this format only
    import onnxruntime  # noqa: PLC0415 - the export extra's, for this format only

    path = folder.weights("onnx")
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = images.views.permute(0, 3, 1, 2).float().numpy()
    return session.run(["logits"], {"pixels": pixels})[0]

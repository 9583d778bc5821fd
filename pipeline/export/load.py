"""An export folder read back: our net rebuilt from model.json and model.safetensors, with its preprocessing (what
`pipeline.predict` runs on an export)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.export import formats
from pipeline.export.files import ExportDir, ExportError
from pipeline.export.preprocess import Preprocess


def load_export(folder: Path | str) -> tuple[torch.nn.Module, Preprocess, dict]:
    """(the net in fp32 evaluation mode, its preprocessing, model.json) of an export folder with model.safetensors."""
    export = ExportDir(folder)
    description = export.read()
    if "safetensors" not in description.get("files", {}):
        made = ", ".join(description.get("files", {})) or "none"
        raise ExportError(f"{export.path}: no model.safetensors (formats here: {made}); export the run with "
                          "--to safetensors to use it here")
    formats.require("safetensors")
    net = formats.load_safetensors(export, description)
    return net, Preprocess.from_json(description["preprocess"], export.path), description

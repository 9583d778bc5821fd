"""An export folder: one checkpoint's weights in the formats asked for, and `model.json` that says what they are.

    <run>/export/step-<N>/      (the default; `--out` picks another folder)
      model.json                the architecture as our registry names it, the preprocessing, the classes, the
                                errors reported for this checkpoint, where it came from, each format's check
      model.safetensors         the weights, our names (`--to safetensors`)
      mean_image.npy            the per-pixel mean the net subtracts, when it does (beside model.safetensors)
      model.onnx                the net with its normalisation in front (`--to onnx`)
      torchvision.pth           a state_dict with torchvision's names (`--to torchvision`)

Every name is written here. One folder holds one checkpoint: exporting another format of the same checkpoint
adds to it, another checkpoint is refused (a folder must not mix two nets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data_prep.durable import write_file

FORMAT = "resnet-repro-export"
VERSION = 1
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchvision": "torchvision.pth"}


class ExportError(RuntimeError):
    """An export that cannot be made or read; the message names the file or the setting."""

    exit_code = 2


@dataclass(frozen=True)
class ExportDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def description(self) -> Path:
        return self.path / "model.json"

    @property
    def mean_image(self) -> Path:
        return self.path / "mean_image.npy"

    def weights(self, fmt: str) -> Path:
        return self.path / FILES[fmt]

    def is_export(self) -> bool:
        return self.description.is_file()

    def read(self) -> dict:
        """model.json, checked to be an export's of a version this project reads."""
        try:
            data = json.loads(self.description.read_text())
        except FileNotFoundError:
            raise ExportError(f"{self.path}: no {self.description.name}; is this a folder written by "
                              "`python -m pipeline.export`?") from None
        except ValueError as e:
            raise ExportError(f"{self.description}: not valid JSON: {e}") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ExportError(f"{self.description}: format {data.get('format')!r} version {data.get('version')!r} "
                              f"is not {FORMAT!r} version {VERSION}")
        return data

    def write(self, data: dict) -> None:
        write_file(self.description, (json.dumps({"format": FORMAT, "version": VERSION, **data}, indent=1) + "\n")
                   .encode())

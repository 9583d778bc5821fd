"""A trained net for use outside the project: a run's checkpoint exported to torchvision's names, safetensors (with
model.json: the architecture, the preprocessing, the classes) or ONNX, each checked in the library that receives it.

    report = export_run(run_dir, to=["safetensors", "onnx"])   # <run>/export/step-<N>/
    net, preprocess, description = load_export(report.folder)  # our net rebuilt from model.json

- `source`: the checkpoint (best, else last), its weights from either engine, the run's evaluation preprocessing;
- `preprocess`: that preprocessing as data (model.json) and as code (views of one image, normalisation);
- `twins`: which nets torchvision builds too, and our names in theirs;
- `formats`: each format written, and run as its receiving library runs it;
- `check`: the export against our net on real images of the run's evaluation split;
- `files`: the export folder's names and model.json;
- `writer`: one export, start to end; `load`: an export folder read back.
"""

from pipeline.export.files import ExportError
from pipeline.export.load import load_export
from pipeline.export.twins import NoTwin
from pipeline.export.writer import FORMATS, export_run

__all__ = ["FORMATS", "ExportError", "NoTwin", "export_run", "load_export"]

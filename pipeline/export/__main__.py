"""`python -m pipeline.export RUN_DIR [--to safetensors,onnx,torchvision] [--out DIR] [--checkpoint best|last|STEP]
[data.* overrides]`

Exports a trained run's net for use outside the project, into <RUN_DIR>/export/step-<N>/ by default:
  safetensors  the weights (our names) and model.json: the architecture as `pipeline.models.build` takes it, the
               evaluation's preprocessing (sizes, RGB 0-255, mean image or channel mean, std), the class names, the
               errors reported for this checkpoint;
  onnx         the net with its normalisation folded in, any batch size, run by ONNX Runtime;
  torchvision  a state_dict that torchvision.models.resnetNN (and timm's resnetNN) loads strictly: ImageNet
               ResNets with option B shortcuts and, for 50 layers and more, model.bottleneck_stride=3x3.
Each format is run by its receiving library on real images of the run's evaluation split and compared with the
project's net (fp32) before it is reported; the largest logit difference is printed. Needs the export extra:
pip install 'resnet-repro[export]'.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.checkpoint.store import CheckpointDamaged
from pipeline.config import ConfigError
from pipeline.data import DatasetError
from pipeline.export import FORMATS, ExportError, NoTwin, export_run


def _formats(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: one or more of {', '.join(FORMATS)}, comma-separated")
    return chosen


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory (it holds config.yaml and checkpoints/)")
    parser.add_argument("overrides", nargs="*", help="data.* settings, e.g. data.root=/new/place/of/the/dataset")
    parser.add_argument("--to", type=_formats, default=["safetensors"],
                        help=f"formats, comma-separated: {', '.join(FORMATS)} (default: safetensors)")
    parser.add_argument("--out", type=Path, help="the export folder (default: RUN_DIR/export/step-<N>)")
    parser.add_argument("--checkpoint", help="best (lowest validation error), last, or a step number (default: the "
                                             "best where the checkpoints record one, else the last)")
    parser.add_argument("--step", help="the checkpoint of this step (same as --checkpoint STEP)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    bad = [o for o in args.overrides if not o.startswith("data.")]
    if bad:
        print(f"error: an export takes data.* overrides only (the net is the run's): {bad[0]}", file=sys.stderr)
        return 2
    try:
        report = export_run(args.run_dir, args.to, args.out, args.step or args.checkpoint, args.overrides)
    except NoTwin as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ExportError, ConfigError, DatasetError, FileNotFoundError, ValueError, CheckpointDamaged) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    for fmt, check in report.checks.items():
        print(f"{fmt:12s} {report.files[fmt]}\n{'':12s} checked: {check.line()}")
    print(f"exported the checkpoint of step {report.step} to {report.folder} (model.json describes it)")
    if "safetensors" in report.files:
        print(f"try it on a photo: python -m pipeline.predict {report.folder} IMAGE")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The trained net as a W&B model artifact (`logging.wandb_log_model`: off, final, best), logged by the primary rank at
the end of a finished training, never after an interruption.

    log_model(cfg, info, run, logger, step)   # after the final evaluation is saved and recorded in results.json

The last checkpoint (final) or the best (best) is exported as `pipeline.export` exports it, safetensors with its
model.json (and mean_image.npy where the net subtracts one), into `<run>/export/step-<N>/`, checked against our net
on real evaluation images; that folder's files become the artifact `model-<W&B run name>` (type "model", aliases
`step-<N>` and `final` or `best`, metadata: the architecture, the step, the errors reported for it, the check's
largest logit difference). An event in metrics.jsonl names both (`model artifact`: `model_artifact`,
`model_export`, `model_url` when online), which the report reads. An offline run's artifact is uploaded by `wandb
sync` from the export folder: keep `<run>/export/` until then.

A finished training stays finished: an export or an artifact that fails is one `warning:` event naming what failed.
Without the export's library (safetensors) the start says so once, and the end exports nothing.
"""

from __future__ import annotations

import importlib.util
import re
import time

from pipeline.config import ExperimentConfig
from pipeline.config.schema import LoggingConfig
from pipeline.dist import DistInfo
from pipeline.export import export_run
from pipeline.export.files import ExportDir
from pipeline.export.formats import NEEDS
from pipeline.run.layout import RunDir
from pipeline.run.lock import RunLock
from pipeline.run.logger import Artifact, NullLogger

EVENT = "model artifact"
FORMAT = "safetensors"
_CHECKPOINT = {"final": "last", "best": "best"}


def wanted(cfg: LoggingConfig) -> bool:
    return cfg.wandb_mode != "disabled" and cfg.wandb_log_model != "off"


def missing_libraries() -> list[str]:
    return [name for name in NEEDS[FORMAT] if importlib.util.find_spec(name) is None]


def library_warning(cfg: LoggingConfig) -> str | None:
    """What the start says when the model artifact cannot be made: its export's library is not installed."""
    missing = missing_libraries() if wanted(cfg) else []
    if not missing:
        return None
    return (f"logging.wandb_log_model={cfg.wandb_log_model}: the trained model will not be logged to W&B, its export "
            f"needs {', '.join(missing)}: pip install 'resnet-repro[export]' (or set logging.wandb_log_model=off)")


def artifact_name(run_name: str) -> str:
    """`model-<run name>` in the characters W&B takes in an artifact's name, at most 128 of them."""
    return ("model-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-"))[:128]


def log_model(cfg: ExperimentConfig, info: DistInfo, run: RunDir, logger: NullLogger, step: int,
              lock: RunLock | None = None) -> None:
    """On the primary rank, with W&B on and `logging.wandb_log_model` not off: export the checkpoint it names and log
    the export as the run's model artifact. Called once the other ranks wait on nothing more from this one."""
    if not info.is_primary or not wanted(cfg.logging) or missing_libraries():
        return
    if lock is not None:
        lock.ensure_held()  # a run directory taken over gets nothing more from this training
    which = cfg.logging.wandb_log_model
    started = time.monotonic()
    try:
        report = export_run(run.path, [FORMAT], checkpoint=_CHECKPOINT[which])
    except Exception as error:  # noqa: BLE001 - the training has finished: its export failing must not fail it
        logger.log({"event": f"warning: the trained model was not logged to W&B: its export "
                             f"(logging.wandb_log_model={which}) failed: {_reason(error)}; try `python -m "
                             f"pipeline.export {run.path} --checkpoint {_CHECKPOINT[which]}`"}, step)
        return
    export_s = time.monotonic() - started
    folder = ExportDir(report.folder)
    artifact = _artifact(cfg, which, folder, report.step, report.checks[FORMAT].as_dict())
    try:
        url = logger.log_artifact(artifact)
    except Exception as error:  # noqa: BLE001 - W&B refusing the artifact must not fail a finished training
        logger.log({"event": f"warning: the trained model was exported to {folder.path} but not logged to W&B as "
                             f"{artifact.name}: {_reason(error)}"}, step)
        return
    record = {"event": EVENT, "model_artifact": f"{artifact.name}:{artifact.aliases[0]}",
              "model_export": str(folder.path), "export_s": round(export_s, 3),
              "artifact_s": round(time.monotonic() - started - export_s, 3)}
    if url:
        record["model_url"] = url
    logger.log(record, step)


def _artifact(cfg: ExperimentConfig, which: str, folder: ExportDir, step: int, check: dict) -> Artifact:
    description = folder.read()
    files = {path.name: path for path in (folder.description, folder.weights(FORMAT), folder.mean_image)
             if path.is_file()}
    metadata = {"architecture": description["architecture"], "step": step, "checkpoint": _CHECKPOINT[which],
                "reported": description.get("reported", {}), "check": check}
    # model.json is rewritten when another format of the same checkpoint is exported into the folder later (the
    # weights are not: one folder holds one checkpoint), so W&B keeps its own copy of it.
    return Artifact(artifact_name(cfg.logging.wandb_name or cfg.run.name), "model", files,
                    [f"step-{step}", which], metadata, mutable=frozenset({folder.description.name}))


def _reason(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())

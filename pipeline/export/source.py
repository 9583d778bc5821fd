"""What an export is made from: one intact checkpoint of a run, its weights (DDP's or DeepSpeed's files alike), the
net they belong to, and what the run's evaluation did to an image (`Preprocess`), all from the run directory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.manifest import ManifestError, load_manifest
from pipeline.checkpoint.store import Checkpoint, CheckpointDamaged, CheckpointStore
from pipeline.config import ExperimentConfig
from pipeline.data import evaluation_views
from pipeline.data.dataset import DatasetError, Split
from pipeline.engine.weights import load_weights
from pipeline.evaluate.config import run_config
from pipeline.export.preprocess import Preprocess
from pipeline.models import build
from pipeline.models.registry import get_spec
from pipeline.run.layout import RunDir
from pipeline.run.results import read_results

log = logging.getLogger("pipeline.export")


@dataclass(frozen=True, eq=False)
class ExportSource:
    run_dir: Path
    cfg: ExperimentConfig
    checkpoint: Checkpoint
    weights: dict[str, torch.Tensor]
    preprocess: Preprocess
    eval_split: Split  # where the export's check takes its images
    classes: list[dict]  # [{"index", "id", "name"}], the manifest's

    @property
    def architecture(self) -> dict:
        """The net as `pipeline.models.build` takes it (the registry's name and its options, resolved)."""
        m = self.cfg.model
        return {"name": m.name, "num_classes": self.num_classes, "shortcut": _resolved_shortcut(m.name, m.shortcut),
                "bottleneck_stride": m.bottleneck_stride}

    @property
    def num_classes(self) -> int:
        return int(self.weights["fc.weight"].shape[0])

    def model(self) -> torch.nn.Module:
        """Our net with the checkpoint's weights, in fp32 and evaluation mode (ghost BN, a training-time option,
        is BN in evaluation)."""
        net = build_net(self.architecture)
        net.load_state_dict(self.weights, strict=True)
        return net.float().eval()

    def reported(self) -> dict:
        """The errors results.json records for this checkpoint's step: training's final evaluation, and each
        protocol `pipeline.evaluate` scored it with."""
        results = read_results(self.run_dir)
        found = {}
        train = results.get("train", {})
        if train.get("step") == self.checkpoint.step:
            found[train.get("protocol", "center")] = _error_record(train)
        for protocol, record in results.get("eval", {}).items():
            if record.get("step") == self.checkpoint.step:
                found[protocol] = _error_record(record)
        return found

    def provenance(self) -> dict:
        return {"run_dir": str(self.run_dir.resolve()), "run_name": self.cfg.run.name,
                "checkpoint": self.checkpoint.path.name, "step": self.checkpoint.step, "engine": self.cfg.engine.name,
                "dataset": str(Path(self.cfg.data.root).resolve())}


def open_source(run_dir: Path | str, checkpoint: str | None = None, overrides: Sequence[str] = ()) -> ExportSource:
    """The run's checkpoint to export: `checkpoint` is best, last or a step number; None takes the best (the
    lowest validation error) where one records it, else the last. `overrides`: data.* settings, e.g. data.root
    where the run's dataset has moved (its mean image and evaluation images are needed)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    chosen = _choose(CheckpointStore(RunDir(run_dir).checkpoints), checkpoint)
    try:
        split, geometry, finish = evaluation_views(cfg.data, cfg.data.eval_split, eval_resize=cfg.eval.resize)
    except DatasetError as e:
        raise DatasetError(f"{e}\nThe export needs the run's dataset (its statistics and evaluation images): pass "
                           "data.root=PATH where it now lies") from None
    preprocess = Preprocess.of_evaluation(geometry, finish, cfg.data.normalize, cfg.data.image_size)
    weights = load_weights(chosen.path)
    return ExportSource(run_dir, cfg, chosen, weights, preprocess, split, _classes(cfg, weights))


def _choose(store: CheckpointStore, which: str | None) -> Checkpoint:
    if which is None:
        which = "best" if store.best() is not None else "last"
    if which not in ("best", "last"):
        try:
            step = int(which)
        except ValueError:
            raise ValueError(f"checkpoint {which!r}: best, last or a step number") from None
        matching = [c for c in store.complete() if c.step == step]
        if not matching:
            steps = ", ".join(str(c.step) for c in store.complete()) or "none"
            raise FileNotFoundError(f"{store.root}: no complete checkpoint of step {step} (steps: {steps})")
        chosen = matching[0]
    else:
        chosen = store.select(which)
    problem = store.verify(chosen)
    if problem:
        raise CheckpointDamaged(f"{chosen.path} is damaged and cannot be exported: {problem}; export another "
                                "(--checkpoint last, best or a step)")
    return chosen


def _classes(cfg: ExperimentConfig, weights: dict[str, torch.Tensor]) -> list[dict]:
    count = int(weights["fc.weight"].shape[0])
    try:
        manifest = load_manifest(cfg.data.root)
    except ManifestError as e:
        log.warning("%s: the classes are exported as numbers only", e)
        return [{"index": i, "id": str(i), "name": str(i)} for i in range(count)]
    classes = [{"index": c.index, "id": c.id, "name": c.name} for c in manifest.classes]
    # A net with more outputs than the dataset has classes (a table shrunk onto a small dataset): the rest unnamed.
    classes += [{"index": i, "id": str(i), "name": f"(no class {i} in the dataset)"}
                for i in range(len(classes), count)]
    return classes[:count]


def _error_record(record: dict) -> dict:
    keys = ("split", "samples", "top1_error", "top5_error")
    return {k: record[k] for k in keys if k in record}


def build_net(architecture: dict) -> torch.nn.Module:
    """The net an export's `architecture` describes, freshly initialised (what model.json is rebuilt with)."""
    return build(architecture["name"], num_classes=int(architecture["num_classes"]),
                 shortcut=architecture["shortcut"] or "default",  # None: a plain net
                 bottleneck_stride=architecture["bottleneck_stride"])


def _resolved_shortcut(name: str, shortcut: str) -> str | None:
    return get_spec(name).default_shortcut if shortcut == "default" else shortcut

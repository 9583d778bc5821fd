"""The evaluation job: a trained run's checkpoint evaluated with one of the paper's protocols on every rank, the
result recorded in its `results.json` (and Fig. 7's layer responses in `layer_responses.json`).

`run_config` is the config a run was trained with, with the evaluation's own `data.*` and `eval.*` settings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pipeline import dist
from pipeline.checkpoint.store import CheckpointDamaged, CheckpointStore
from pipeline.config import ExperimentConfig
from pipeline.config.schema import PROTOCOLS
from pipeline.data import build_loader
from pipeline.dist import DistInfo, dist_info_from_env
from pipeline.dist.process import resolve_device, use_task_cpus
from pipeline.engine.common import AUTOCAST_DTYPES
from pipeline.engine.weights import load_weights
from pipeline.evaluate.config import run_config
from pipeline.evaluate.layer_responses import LayerResponses
from pipeline.evaluate.progress import EvalProgress
from pipeline.evaluate.protocols import evaluate
from pipeline.models import build_model
from pipeline.run.layout import RunDir
from pipeline.run.results import update_results, write_layer_responses

log = logging.getLogger("pipeline.evaluate")



def evaluate_run(run_dir: Path, protocol: str = "center", checkpoint: str = "last", split: str | None = None,
                 layer_responses: bool = False, info: DistInfo | None = None, overrides: Sequence[str] = ()) -> dict:
    """Evaluate `run_dir`'s checkpoint with `protocol` (`overrides`: data.* and eval.* settings for this evaluation
    only); the primary rank records and returns the result."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if layer_responses and protocol != "center":
        raise ValueError("layer responses are measured on the centre view: use --protocol center")
    store = CheckpointStore(RunDir(run_dir).checkpoints)
    chosen = store.select(checkpoint)
    info = info or dist_info_from_env()
    device = resolve_device(cfg.run.device, info)
    use_task_cpus()
    if info.distributed:
        dist.init_process_group(info, device.type, cfg.engine.timeout_minutes)
    try:
        # Its files are what training wrote (the primary compares them with the marker; every rank learns the verdict).
        dist.on_every_rank(lambda: _check_intact(store, chosen) if info.is_primary else None)
        split = split or cfg.data.eval_split
        loader = build_loader(cfg.data, split, info, train=False, device=device, seed=cfg.run.seed,
                              protocol=protocol, scales=cfg.eval.scales, eval_resize=cfg.eval.resize)
        model = build_model(cfg.model)
        model.load_state_dict(dist.from_primary(lambda: load_weights(chosen.path)))  # read once, for every rank
        model = model.to(device).eval()
        responses = LayerResponses(model) if layer_responses else contextlib.nullcontext()
        # Progress on the primary rank's stderr (each rank holds about as many batches): a bar on a terminal,
        # a line now and then in a log file.
        progress = EvalProgress(len(loader), enabled=info.is_primary, desc=f"evaluating {protocol} {split}")
        with responses, progress:
            result = evaluate(_predictor(model, cfg, device), loader, progress=progress)
        record = {"protocol": protocol, "split": split, "checkpoint": str(chosen.path.resolve()),
                  "step": chosen.step, "world_size": info.world_size, **result.as_dict()}
        if overrides:
            record["overrides"] = list(overrides)
        stds = responses.result() if layer_responses else None
        if info.is_primary:
            update_results(run_dir, "eval", record, protocol=protocol)
            if stds is not None:
                write_layer_responses(run_dir, {**stds, "samples": result.samples, "split": split,
                                                "checkpoint": record["checkpoint"], "step": chosen.step})
        return record
    finally:
        dist.destroy_process_group()


def _check_intact(store: CheckpointStore, chosen) -> None:
    problem = store.verify(chosen)
    if problem:
        raise CheckpointDamaged(f"{chosen.path} is damaged and cannot be evaluated: {problem}; evaluate another "
                                "checkpoint (--checkpoint last, best or a checkpoint directory)")


def _predictor(model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> Callable:
    dtype = AUTOCAST_DTYPES[cfg.engine.precision]

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        if cfg.engine.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            return model(images).float()

    return predict

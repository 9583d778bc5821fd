"""Run directories as training and evaluation leave them, written with the project's own writers.

Each planned run of a table gets its resolved `config.yaml`, a `metrics.jsonl` written by `RunLogger`
(start record, training and validation records), and, once finished, `results.json` (and optionally
`layer_responses.json`) written by `pipeline.run.results`: the report reads exactly what a real run leaves.
"""

from __future__ import annotations

import math
import os
import time

from pipeline.config import save_config
from pipeline.config.schema import LoggingConfig
from pipeline.run.layout import RunDir
from pipeline.run.logger import make_logger
from pipeline.run.results import update_results, write_layer_responses
from pipeline.tables.spec import PlannedRun

TOTAL_STEPS = 1000


def write_run(run: PlannedRun, *, steps: int = TOTAL_STEPS, final_error: float = 10.0, start_error: float = 80.0,
              evaluations: dict[str, dict[str, float]] | None = None, responses: list[float] | None = None,
              active: bool = False, world_size: int = 1, model: dict | None = None) -> None:
    """A run that reached `steps` of TOTAL_STEPS; finished (with results.json) when steps == TOTAL_STEPS.

    The error curves fall exponentially from `start_error` to exactly `final_error` (training error 2 points lower).
    `evaluations`: protocol -> metrics, written under results.json's "eval". `active`: the metrics file was
    just written (a run in progress); otherwise it is dated an hour ago (a stopped run). `world_size`: the
    ranks its start record says it trained on. `model`: the model artifact event's fields, logged at the last step.
    """
    run_dir = run.run_dir
    save_config(run.cfg, run_dir / "config.yaml")
    logger = make_logger(True, run_dir, LoggingConfig(wandb_mode="disabled"), run.cfg.run.name, {})
    logger.log({"event": "start", "total_steps": TOTAL_STEPS, "steps_per_epoch": 100, "world_size": world_size}, 0,
               console=False)

    def error(step: int) -> float:  # start_error at step 0, exactly final_error at the last step
        decay = (math.exp(-5 * step / TOTAL_STEPS) - math.exp(-5)) / (1 - math.exp(-5))
        return final_error + (start_error - final_error) * decay

    for step in range(50, steps + 1, 50):
        logger.log({"loss": error(step) / 20, "train_top1_error": error(step) - 2.0}, step, console=False)
        if step % 100 == 0:
            logger.log({"val_top1_error": error(step), "val_top5_error": error(step) / 3}, step, console=False)
    if model is not None:
        logger.log({"event": "model artifact", **model}, steps, console=False)
    logger.close()
    if steps == TOTAL_STEPS:
        update_results(run_dir, "train", {"step": steps, "epoch": 10, "split": "test", "protocol": "center",
                                          "samples": 10000, "top1_error": final_error,
                                          "top5_error": final_error / 3})
        for protocol, metrics in (evaluations or {}).items():
            update_results(run_dir, "eval", {"protocol": protocol, "samples": 50000, "step": steps, **metrics},
                           protocol=protocol)
        if responses is not None:
            write_layer_responses(run_dir, {"layers": [f"bn{i}" for i in range(len(responses))],
                                            "std": responses, "samples": 10000, "step": steps})
    if not active:
        an_hour_ago = time.time() - 3600
        os.utime(RunDir(run_dir).metrics, (an_hour_ago, an_hour_ago))

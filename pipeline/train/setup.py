"""What training sets up around its loop, the same on every rank: the start checked and the run directory taken,
the data opened, the directory checked and the config written (the start accepted), the newest intact checkpoint
resumed, the start recorded, and what each checkpoint holds besides the engine's own state.

Each step that can fail on one rank alone (a directory it cannot write, a damaged file) runs inside
`dist.on_every_rank` in the loop, so that every rank ends with the same error and none waits at a collective.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep.manifest import MANIFEST_NAME
from pipeline import dist
from pipeline.checkpoint import CheckpointDirError
from pipeline.checkpoint.background import FileWriter
from pipeline.checkpoint.run_checkpoints import QueueFiles, RunCheckpoints
from pipeline.config import ExperimentConfig, config_to_dict, save_config
from pipeline.config.checks import num_classes_warning, precision_warning, schedule_warning, warmup_warning
from pipeline.config.per_gpu_batch import check_bn_groups, gpu_share
from pipeline.data import build_loader, dataset_num_classes
from pipeline.dist import DistInfo
from pipeline.dist.process import rng_state, set_rng_state
from pipeline.run.continuity import check_continues
from pipeline.run.layout import RunDir
from pipeline.run.lock import RunLock
from pipeline.train.model_artifact import library_warning
from pipeline.train.progress import Clock, Progress
from pipeline.train.schedule import LRSchedule

log = logging.getLogger("pipeline.train")


def own_run_directory(cfg: ExperimentConfig, info: DistInfo, lock: RunLock | None, created: list[Path],
                      on_start: Callable[[], None] | None) -> None:
    """Check the start, then take the run directory: what the config alone can tell is refused before any
    directory is made; the primary takes the run directory's lock (RunLocked when another live run holds it),
    refuses a config that changes what the run's checkpoints hold (`pipeline.run.continuity`), then runs
    `on_start`; the other ranks (`lock` None) do no more. The directories the primary makes are added to
    `created`, for `remove_if_empty` at the end: a refused start leaves none behind."""
    check_bn_groups(cfg, info.world_size)
    if lock is None:
        return

    def take() -> None:
        created.extend(make_directories(lock.run_dir))
        lock.acquire()

    writing_run_dir(lock.run_dir, take)
    check_continues(RunDir.of(cfg), cfg, lambda: dataset_num_classes(cfg.data))
    lock.start_heartbeat()
    if on_start is not None:
        on_start()


def make_directories(path: Path) -> list[Path]:
    """Make `path` and its missing parents; returns those this call made (not one another process made first)."""
    made = []
    for directory in [*reversed(path.parents), path]:
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        made.append(directory)
    return made


def remove_if_empty(directories: list[Path]) -> None:
    """Remove each of `directories` (made by this start) that it left empty, deepest first."""
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:  # not empty (the start was accepted), or gone: nothing to undo
            return


def check_run_directory(cfg: ExperimentConfig, info: DistInfo, device: torch.device,
                        checkpoints: RunCheckpoints) -> None:
    """Check that this rank can write the run directory and record where it runs; the primary then writes the
    resolved config: the start is accepted."""
    run = RunDir.of(cfg)
    checkpoints.prepare()  # every rank writes its own files into checkpoints
    writing_run_dir(run.path, lambda: _record_placement(run, info, device))
    if info.is_primary:
        writing_run_dir(run.path, lambda: save_config(cfg, run.config))


def open_data(cfg: ExperimentConfig, info: DistInfo, device: torch.device) -> tuple:
    """Open the dataset (validated once, by the primary) and resolve the net's class count from it; nothing is
    written. Returns the loaders and what to warn about the net's classes against the dataset's."""
    train_loader = build_loader(cfg.data, cfg.data.train_split, info, train=True, device=device, seed=cfg.run.seed)
    eval_loader = build_loader(cfg.data, cfg.data.eval_split, info, train=False, device=device, seed=cfg.run.seed,
                               eval_resize=cfg.eval.resize)
    warnings = []
    if cfg.model.num_classes is None:
        cfg.model.num_classes = dist.from_primary(lambda: dataset_num_classes(cfg.data))
    elif cfg.data.backend != "synthetic":  # synthetic labels are drawn for the net
        dataset_classes = dist.from_primary(lambda: dataset_num_classes(cfg.data))
        warnings.append(num_classes_warning(cfg.model.num_classes, dataset_classes,
                                            str(Path(cfg.data.root) / MANIFEST_NAME)))
    return train_loader, eval_loader, warnings


def writing_run_dir(run_dir: Path, write: Callable[[], None]) -> None:
    """`write()`, with an OSError said as the run directory that cannot be written (exit code 6)."""
    try:
        write()
    except OSError as e:
        raise CheckpointDirError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


@dataclass
class Resumed:
    """Where training starts: the progress restored (step 0 for a new run), and what the start record says of it."""

    progress: Progress = field(default_factory=Progress)
    events: list[str] = field(default_factory=list)


def resume(checkpoints: RunCheckpoints, engine, schedule: LRSchedule, loader, info: DistInfo,
           run: RunDir) -> Resumed:
    """Resume from the newest intact checkpoint, if there is one (collective): the engine's weights and optimizer,
    then the progress, the schedule's observations and, at the same world size, the loader's position and the
    RNG; saved by another number of ranks, the epoch is replayed from its first step."""
    resumed = checkpoints.resume(engine)
    if resumed is None:
        return Resumed()
    progress = Progress(**resumed.extra["progress"])
    schedule.load_state_dict(resumed.extra["schedule"])
    events = [f"warning: checkpoint {skipped} is damaged and was not used; resumed from {resumed.checkpoint.path.name}"
              for skipped in resumed.skipped]
    if resumed.rank_state is not None:
        set_rng_state(resumed.rank_state["rng"])
        loader.load_state_dict(resumed.rank_state["loader"])
    else:
        saved_step = progress.step
        progress.step = _replay_epoch(loader, progress.epoch)
        log.warning("%s was saved by %d ranks at step %d; this run has %d: the data order of an epoch depends "
                    "on the world size, so epoch %d is replayed from its first step (%d) with the weights "
                    "and optimizer state of step %d", resumed.checkpoint.path, resumed.saved_world_size, saved_step,
                    info.world_size, progress.epoch, progress.step, saved_step)
        events.append(f"world size changed from {resumed.saved_world_size} to {info.world_size}: epoch "
                      f"{progress.epoch} replayed from step {progress.step}")
    log.warning("resuming %s from step %d (epoch %d)", run.path, progress.step, progress.epoch)
    return Resumed(progress, events)


def log_start(logger, cfg: ExperimentConfig, info: DistInfo, device: torch.device, schedule: LRSchedule, loader,
              warnings: list[str | None], resumed: Resumed) -> None:
    """The start record (the report's progress reads its total), then each warning and what the resume did."""
    step = resumed.progress.step
    share = gpu_share(cfg, info.world_size, on_gpus=device.type == "cuda")  # a CPU run's warning speaks of processes
    logger.log({"event": "start", "total_steps": schedule.total_steps, "steps_per_epoch": loader.steps_per_epoch,
                "world_size": info.world_size, "images_per_gpu": share.images, "bn_batch": share.bn_batch}, step)
    warnings = [*warnings, share.below_recipe(), schedule_warning(cfg.schedule),
                warmup_warning(cfg.schedule, loader.steps_per_epoch), precision_warning(cfg.engine, device.type),
                library_warning(cfg.logging)]
    for warning in filter(None, warnings):
        logger.log({"event": f"warning: {warning}"}, step)
    for event in resumed.events:
        logger.log({"event": event}, step)


def checkpoint_files(cfg: ExperimentConfig, info: DistInfo, engine, progress: Progress, clock: Clock,
                     schedule: LRSchedule, loader) -> QueueFiles:
    """What this rank writes into the checkpoint of this step: the engine's files with, on the primary, the progress,
    the schedule's state, the config and the RNG beside them; and one file per rank with its loader's position and
    RNG. Taken now: a background save writes a snapshot while training goes on."""
    progress.elapsed_s = clock.elapsed()
    rank_state = {"loader": loader.state_dict(), "rng": rng_state(), "world_size": info.world_size}
    extra = {"progress": vars(progress).copy(), "schedule": schedule.state_dict(), "config": config_to_dict(cfg),
             "rng": rng_state()}

    def queue_files(staging: Path, writer: FileWriter) -> None:
        engine.save(staging, extra, info.is_primary, writer)  # its collectives first: see pipeline.engine
        writer.submit(f"rank-{info.rank:05d}.pt", rank_state)

    return queue_files


def _record_placement(run: RunDir, info: DistInfo, device: torch.device) -> None:
    """Each rank writes where it runs (`ranks/rank-NNNNN.json`, this attempt's), to check placement later."""
    run.ranks.mkdir(parents=True, exist_ok=True)
    record = {**info.describe(), "device": str(device), "pid": os.getpid(), "time": time.time()}
    run.rank_placement(info.rank).write_text(json.dumps(record, sort_keys=True) + "\n")


def _replay_epoch(loader, epoch: int) -> int:
    """Restart `epoch` from its first step (another world size cannot continue mid-epoch); returns that step.

    Every epoch has `steps_per_epoch` steps whatever the world size (the global batch is fixed), so the
    step at an epoch's start is `epoch * steps_per_epoch` and the schedule by step stays the same."""
    loader.restart_epoch(epoch)
    return epoch * loader.steps_per_epoch

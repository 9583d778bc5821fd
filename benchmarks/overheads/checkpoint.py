"""Section `checkpoint`: seconds the training loop is blocked per save, synchronous and background."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from overheads.common import IMAGENET_CONFIGS, Lines, load_tolerant, median, table


def _engine_and_write(config: Path) -> tuple[object, Callable[[int], Callable], float]:
    """A real ImageNet net in the DDP engine (world of 1) after one SGD step (so it has momentum), and what the
    trainer hands a save for a step (as `save_checkpoint` in pipeline/train.py builds it); with the state's MB.

    Before `pipeline.checkpoint.background` that is `write(staging) -> records` for `CheckpointStore.save`; with it,
    `queue_files(staging, writer)` for `CheckpointSaves.save`."""
    import torch

    from pipeline.checkpoint.store import save_state
    from pipeline.config import config_to_dict
    from pipeline.dist import DistInfo
    from pipeline.dist.process import rng_state
    from pipeline.engine import build_engine
    from pipeline.models import build_model
    from pipeline.train.schedule import LRSchedule

    cfg, _ = load_tolerant(config, ["run.device=cpu"])
    info, device = DistInfo(), torch.device("cpu")
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, 5004, cfg.data.batch_size)  # ImageNet's steps per epoch
    engine = build_engine(cfg.engine, build_model(cfg.model), cfg.optim, schedule.lr(0), info, device, 2)
    engine.train_step(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))  # creates SGD's momentum buffers
    tensors = list(engine.module.state_dict().values()) + [
        t for s in engine.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    state_mb = sum(t.numel() * t.element_size() for t in tensors) / 1e6
    config_dict = config_to_dict(cfg)
    background = _background_save_api() is not None

    def write_for(step: int) -> Callable:
        # What `Loader.state_dict()` holds (a few numbers): the rank's file is small beside the engine's.
        rank_state = {"loader": {"version": 1, "backend": "dali", "epoch": 0, "step": step, "rank": 0,
                                 "world_size": 1, "seed": 0, "backend_state": None},
                      "rng": rng_state(), "world_size": 1}
        extra = {"progress": {"step": step, "epoch": 0, "elapsed_s": 0.0}, "schedule": schedule.state_dict(),
                 "config": config_dict, "rng": rng_state()}

        def write(staging: Path) -> dict:
            files = engine.save(staging, extra, True)
            return {**files, "rank-00000.pt": save_state(staging / "rank-00000.pt", rank_state)}

        def queue_files(staging: Path, writer) -> None:
            engine.save(staging, extra, True, writer)
            writer.submit("rank-00000.pt", rank_state)
        return queue_files if background else write
    return engine, write_for, state_mb


def _background_save_api():
    """The trainer's background-save module (`pipeline.checkpoint.background`), or None at a commit without one."""
    import importlib

    try:
        return importlib.import_module("pipeline.checkpoint.background")
    except ModuleNotFoundError:
        return None


def save_synchronously(store, step: int, write) -> None:
    """One save as the trainer makes a stop's or the last one: the loop waits until it is complete."""
    api = _background_save_api()
    if api is None:
        store.save(step, True, write)
    else:
        saves = api.CheckpointSaves(store, True)
        saves.save(step, write, background=False)
        saves.close()


def measure_background_save(engine, write_for: Callable[[int], Callable], tmp: Path,
                            repeats: int) -> dict | None:
    """Seconds the loop is blocked by one periodic save (written in the background), and seconds until that save
    is complete (`CheckpointSaves.finish`, which the trainer calls at its next check once the writes are done).

    None at a commit without `pipeline.checkpoint.background`."""
    api = _background_save_api()
    if api is None:
        print("background: not available at this commit", flush=True)
        return None
    from pipeline.checkpoint.store import CheckpointStore

    store = CheckpointStore(tmp / "background")
    saves = api.CheckpointSaves(store, True)
    blocking, complete = [], []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        saves.save(step, write_for(step), background=True)
        blocking.append(time.perf_counter() - start)
        while saves.writing:
            time.sleep(0.005)
        saves.finish()
        complete.append(time.perf_counter() - start)
    saves.close()
    return {"blocking_s": blocking, "complete_s": complete}


def checkpoint_blocking(args: argparse.Namespace, work: Path) -> Lines:
    import gc

    from pipeline.checkpoint.store import CheckpointStore
    from pipeline.run.layout import RunDir

    rows, background_rows = [], []
    for name, config in IMAGENET_CONFIGS.items():
        engine, write_for, state_mb = _engine_and_write(config)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            store = CheckpointStore(RunDir(tmp).checkpoints)  # the trainer's defaults: keep 2 and the best
            seconds = []
            for step in range(1, args.repeats + 1):
                write = write_for(step)
                start = time.perf_counter()
                save_synchronously(store, step, write)
                seconds.append(time.perf_counter() - start)
            latest = store.latest()
            files_mb = sum(p.stat().st_size for p in latest.path.rglob("*") if p.is_file()) / 1e6
            background = measure_background_save(engine, write_for, Path(tmp), args.repeats)
        rows.append([name, f"{state_mb:.0f}", f"{files_mb:.0f}", ", ".join(f"{s:.2f}" for s in seconds),
                     f"{median(seconds):.2f}", f"{files_mb / median(seconds):.0f}"])
        if background is not None:
            background_rows.append([name, f"{median(background['blocking_s']):.2f}",
                                    f"{median(background['complete_s']):.2f}"])
        del engine, write_for
        gc.collect()
    disk = subprocess.run(["df", "-h", "--output=source,fstype", args.tmp], capture_output=True, text=True).stdout
    lines = ["### 3. Seconds the training loop is blocked by one checkpoint save", "",
             "The real nets (configs/imagenet/resnet50.yaml and resnet152.yaml: `pipeline.models` built by "
             "`build_engine`, DDP engine, world of 1, CPU) after one SGD step, so the state is what a run saves: "
             "weights, BN buffers and SGD momentum (\"state MB\", fp32). Synchronous save as the trainer does it: "
             "`CheckpointStore.save(step, True, write)` with `write` built as `save_checkpoint` in "
             "pipeline/train.py (the engine's `state.pt` with progress, schedule, config and RNG, plus the rank's "
             "file), each file serialised, sha256-hashed, written, fsynced and renamed, then the COMPLETE marker "
             "and the rotation (keep 2). "
             f"{args.repeats} saves each (steps 1..{args.repeats}), the median reported, into a temporary directory "
             f"in {args.tmp} ({' '.join(disk.split()[2:4]) or 'unknown device'}).", ""]
    lines += table(["net", "state MB", "checkpoint MB", "blocking seconds, each save", "median", "MB/s"], rows)
    lines += [""]
    if background_rows:
        lines += table(["net", "background: blocking seconds (median)", "until complete (median)"], background_rows)
    else:
        lines += ["background: not available at this commit (no `pipeline.checkpoint.background`)."]
    return lines


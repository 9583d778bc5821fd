"""Training one run: the run directory taken, the data, engine and schedule set up, the newest intact checkpoint
resumed, then the loop, top to bottom, until the schedule ends or a stop signal; the final evaluation last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from pipeline import dist
from pipeline.dist import exit_codes
from pipeline.checkpoint.background import CheckpointSaves, FileWriter
from pipeline.checkpoint.store import CheckpointDirError, CheckpointStore
from pipeline.config import ExperimentConfig, config_to_dict, loggable_config, save_config
from pipeline.config.checks import num_classes_warning, precision_warning, schedule_warning
from pipeline.dist import DistInfo, dist_info_from_env
from pipeline.evaluate.protocols import EvaluationInterrupted, evaluate
from pipeline.evaluate.layer_responses import LayerResponses
from pipeline.config.per_gpu_batch import check_bn_groups, gpu_share
from pipeline.run.logger import make_logger
from pipeline.models import build_model
from pipeline.run.results import update_results, write_layer_responses
from pipeline.checkpoint.resume import resume_latest_intact
from pipeline.run.lock import RunLock
from pipeline.dist.process import StopSignal, peak_memory_mb, resolve_device, rng_state, seed_everything, set_rng_state, use_task_cpus
from pipeline.train.schedule import LRSchedule

log = logging.getLogger("pipeline.train")

EXIT_INTERRUPTED = exit_codes.INTERRUPTED  # stopped by a signal after saving a checkpoint: run again to resume


@dataclass
class Progress:
    """Where training stands: what a checkpoint must restore besides the weights."""

    step: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0  # training wall time so far, over every start of the run (older checkpoints: 0)


def run_dir_of(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def train(cfg: ExperimentConfig, info: Optional[DistInfo] = None,
          on_start: Optional[Callable[[], None]] = None) -> dict:
    """Train (or resume) the run `cfg` describes; returns the final results (or the interruption).

    The primary rank first takes the run directory's lock (`pipeline.run.lock`): a second training into the
    same directory is refused there, before anything is written. `on_start` then runs on the primary rank
    (a SLURM job records its id beside the run). Errors a user can fix end every rank the same way
    (`dist.on_every_rank`): one error, an exit code from `pipeline.dist.exit_codes`, no rank left waiting."""
    info = info or dist_info_from_env()
    device = resolve_device(cfg.run.device, info)
    use_task_cpus()
    if info.distributed or cfg.engine.name == "deepspeed":  # DeepSpeed needs a process group, even of one
        info = dist.with_free_port(info)
        dist.init_process_group(info, device.type, cfg.engine.timeout_minutes)
    lock = RunLock(run_dir_of(cfg)) if info.is_primary else None
    try:
        dist.on_every_rank(lambda: _own_run_directory(lock, on_start))
        return _train(cfg, info, device)
    finally:
        if lock is not None:
            lock.release()
        dist.destroy_process_group()


def _own_run_directory(lock: Optional[RunLock], on_start: Optional[Callable[[], None]]) -> None:
    if lock is None:
        return

    def take() -> None:
        lock.run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # RunLocked when another live run holds it

    _writing_run_dir(lock.run_dir, take)
    lock.start_heartbeat()
    if on_start is not None:
        on_start()


def _train(cfg: ExperimentConfig, info: DistInfo, device: torch.device) -> dict:
    from pipeline.engine import build_engine

    seed_everything(cfg.run.seed, cfg.run.deterministic)
    run_dir = run_dir_of(cfg)
    store = CheckpointStore(run_dir / "checkpoints", cfg.checkpoint.keep_last, cfg.checkpoint.keep_best)
    # What a user can get wrong (an unwritable directory, a missing or damaged dataset) fails on every rank alike.
    # Two steps: opening the data has collectives of its own (one rank validates it for all), which every rank
    # must reach, so nothing that can fail on one rank alone may come before them in the same step.
    dist.on_every_rank(lambda: _check_run_directory(cfg, info, device, store))
    train_loader, eval_loader, warnings = dist.on_every_rank(lambda: _open_data(cfg, info, device))
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, train_loader.steps_per_epoch, cfg.data.batch_size)
    micro_batch = cfg.data.batch_size // info.world_size
    engine = build_engine(cfg.engine, build_model(cfg.model), cfg.optim, schedule.lr(0), info, device, micro_batch)

    # Resume from the newest intact checkpoint, if there is one.
    progress = Progress()
    resumed = resume_latest_intact(store, engine, info)
    resumed_from_world = None
    if resumed is not None:
        progress = Progress(**resumed.extra["progress"])
        schedule.load_state_dict(resumed.extra["schedule"])
        if resumed.rank_state is not None:
            _restore_rank_state(resumed.rank_state, train_loader)
        else:
            resumed_from_world, saved_step = resumed.saved_world_size, progress.step
            progress.step = _replay_epoch(train_loader, progress.epoch)
            log.warning("%s was saved by %d ranks at step %d; this run has %d: the data order of an epoch depends "
                        "on the world size, so epoch %d is replayed from its first step (%d) with the weights "
                        "and optimizer state of step %d", resumed.checkpoint.path, resumed_from_world, saved_step,
                        info.world_size, progress.epoch, progress.step, saved_step)
        log.warning("resuming %s from step %d (epoch %d)", run_dir, progress.step, progress.epoch)
    logger = dist.on_every_rank(lambda: make_logger(info.is_primary, run_dir, cfg.logging, cfg.run.name,
                                                    loggable_config(cfg), progress.step))
    clock = _Clock(progress.elapsed_s)

    saves = CheckpointSaves(store, info.is_primary)

    def save_checkpoint(metrics: Optional[dict] = None, background: bool = False) -> None:
        """A periodic save is written in the background while training goes on; a stop's and the last are not."""
        progress.elapsed_s = clock.elapsed()
        rank_state = {"loader": train_loader.state_dict(), "rng": rng_state(), "world_size": info.world_size}
        extra = {"progress": vars(progress).copy(), "schedule": schedule.state_dict(), "config": config_to_dict(cfg),
                 "rng": rng_state()}

        def queue_files(staging: Path, writer: FileWriter) -> None:
            engine.save(staging, extra, info.is_primary, writer)  # its collectives first: see pipeline.engine
            writer.submit(f"rank-{info.rank:05d}.pt", rank_state)

        saves.save(progress.step, queue_files, metrics, background)

    stop = StopSignal().install()
    total_steps = schedule.total_steps
    last_save = time.monotonic()
    share = gpu_share(cfg, info.world_size)
    logger.log({"event": "start", "total_steps": total_steps, "steps_per_epoch": train_loader.steps_per_epoch,
                "world_size": info.world_size, "images_per_gpu": share.images, "bn_batch": share.bn_batch},
               progress.step)
    warnings += [share.below_recipe(), schedule_warning(cfg.schedule), precision_warning(cfg.engine, device.type)]
    for warning in filter(None, warnings):
        logger.log({"event": f"warning: {warning}"}, progress.step)
    for skipped in resumed.skipped if resumed is not None else []:
        logger.log({"event": f"warning: checkpoint {skipped} is damaged and was not used; resumed from "
                             f"{resumed.checkpoint.path.name}"}, progress.step)
    if resumed_from_world is not None:
        logger.log({"event": f"world size changed from {resumed_from_world} to {info.world_size}: epoch "
                             f"{progress.epoch} replayed from step {progress.step}"}, progress.step)
    window = _Window()
    first_step = progress.step
    try:
        while progress.step < total_steps:
            epoch_done = True
            data_start = time.perf_counter()
            for images, labels in train_loader:
                window.data_time += time.perf_counter() - data_start
                lr = schedule.lr(progress.step)
                engine.set_lr(lr)
                loss, hits = engine.train_step(images, labels)
                progress.step += 1
                window.add(loss, hits, labels.numel())

                if progress.step % cfg.logging.every_steps == 0 or progress.step == total_steps:
                    record = {"epoch": progress.epoch, "lr": lr, **window.report(info, device),  # all-reduced
                              "elapsed_s": clock.elapsed(), "eta_s": window.eta_s(total_steps - progress.step)}
                    logger.log(record, progress.step)
                    if schedule.observe_train_error(progress.step, record["train_top1_error"]):
                        logger.log({"event": f"warm-up ended: lr {schedule.lr(progress.step):g}"}, progress.step)
                    window = _Window()
                if cfg.eval.every_steps and progress.step % cfg.eval.every_steps == 0:
                    _evaluate_and_log(engine, eval_loader, schedule, logger, progress)

                # Step-based saves fall on the same step everywhere; a signal or the clock is one rank's own
                # and needs a collective to agree on (a consistent checkpoint needs every rank), so it is
                # only asked every `check_every_steps` steps, never in between: no host sync per step.
                # The same check asks whether every rank has written its files of a background save.
                steps_due = cfg.checkpoint.every_steps and progress.step % cfg.checkpoint.every_steps == 0
                stopping = minutes_due = False
                if progress.step % cfg.checkpoint.check_every_steps == 0:
                    stopping, minutes_due, writing = dist.any_rank(
                        [stop.received is not None, _minutes_due(cfg, last_save), saves.writing])
                    if saves.pending is not None and not writing:
                        saves.finish()
                if stopping or steps_due or minutes_due:
                    save_checkpoint(background=not stopping)
                    last_save = time.monotonic()
                if progress.step == first_step + 1:
                    dist.watch_for_hangs(cfg.engine.hang_timeout_minutes)  # the slow first step is over
                if stopping:
                    logger.log({"event": f"stopped by {stop.received or 'a signal on another rank'}"}, progress.step)
                    return {"interrupted": True, "step": progress.step, "signal": stop.received}
                if progress.step >= total_steps:
                    epoch_done = False  # stopped mid-epoch: the schedule ended here
                    break
                data_start = time.perf_counter()
            if epoch_done:
                progress.epoch += 1
                if cfg.eval.every_epochs and progress.epoch % cfg.eval.every_epochs == 0:
                    _evaluate_and_log(engine, eval_loader, schedule, logger, progress)
                if cfg.checkpoint.at_epoch_end and progress.step < total_steps:
                    save_checkpoint(background=True)
                    last_save = time.monotonic()

        # A signal now would otherwise go unheard: the loop that checks for it is over. The evaluation stops
        # for it, and the weights are saved for the requeued job, which goes straight to this evaluation.
        logger.log({"event": "final evaluation"}, progress.step)
        responses = LayerResponses(engine.module) if cfg.eval.layer_responses else contextlib.nullcontext()
        try:
            with responses:
                final = evaluate(engine.predict, eval_loader, should_stop=lambda: stop.received is not None)
        except EvaluationInterrupted:
            save_checkpoint()
            logger.log({"event": f"stopped by {stop.received or 'a signal on another rank'} during the final "
                                 "evaluation"}, progress.step)
            return {"interrupted": True, "step": progress.step, "signal": stop.received}
        stds = responses.result() if cfg.eval.layer_responses else None
        result = {"step": progress.step, "epoch": progress.epoch, "split": cfg.data.eval_split,
                  "protocol": "center", **final.as_dict()}
        # Logged as a validation record too: the last point of the validation curve (Figs. 4 and 6).
        logger.log({"kind": "final", "epoch": progress.epoch, **final.as_dict("val_")}, progress.step)
        logger.summary(result)
        save_checkpoint({"val_top1_error": final.top1_error})
        dist.on_every_rank(lambda: _record_results(run_dir, result, stds, final.samples, cfg) if info.is_primary
                           else None)
        return result
    finally:
        saves.close()
        stop.uninstall()
        logger.close()  # after the last save: W&B's teardown can fail (its service shares the job's signals)


def _check_run_directory(cfg: ExperimentConfig, info: DistInfo, device: torch.device, store: CheckpointStore) -> None:
    """Check the run directory and record where this rank runs."""
    run_dir = run_dir_of(cfg)
    check_bn_groups(cfg, info.world_size)
    store.check_writable(f".write-probe-{info.rank:05d}")  # every rank writes its own files into checkpoints
    if info.is_primary:
        store.remove_unfinished()  # before any rank can start a save (`pipeline.checkpoint.background`)
    _writing_run_dir(run_dir, lambda: _record_placement(run_dir, info, device))


def _open_data(cfg: ExperimentConfig, info: DistInfo, device: torch.device) -> tuple:
    """Open the dataset (validated once, by the primary); the primary then writes the resolved config.
    Returns the loaders and what to warn about the net's classes against the dataset's."""
    from pipeline.data import build_loader, dataset_num_classes

    run_dir = run_dir_of(cfg)
    train_loader = build_loader(cfg.data, cfg.data.train_split, info, train=True, device=device, seed=cfg.run.seed)
    eval_loader = build_loader(cfg.data, cfg.data.eval_split, info, train=False, device=device, seed=cfg.run.seed,
                               eval_resize=cfg.eval.resize)
    warnings = []
    if cfg.model.num_classes is None:
        cfg.model.num_classes = dist.from_primary(lambda: dataset_num_classes(cfg.data))
    elif cfg.data.backend != "synthetic":  # synthetic labels are drawn for the net
        dataset_classes = dist.from_primary(lambda: dataset_num_classes(cfg.data))
        warnings.append(num_classes_warning(cfg.model.num_classes, dataset_classes,
                                            str(Path(cfg.data.root) / "manifest.json")))
    if info.is_primary:
        _writing_run_dir(run_dir, lambda: save_config(cfg, run_dir / "config.yaml"))
    return train_loader, eval_loader, warnings


def _writing_run_dir(run_dir: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as e:
        raise CheckpointDirError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


def _record_results(run_dir: Path, result: dict, stds: Optional[dict], samples: int, cfg: ExperimentConfig) -> None:
    update_results(run_dir, "train", result)
    if stds is not None:
        write_layer_responses(run_dir, {**stds, "samples": samples, "split": cfg.data.eval_split,
                                        "step": result["step"]})


def _evaluate_and_log(engine, eval_loader, schedule: LRSchedule, logger, progress: Progress) -> None:
    result = evaluate(engine.predict, eval_loader)
    logger.log({"epoch": progress.epoch, **result.as_dict("val_")}, progress.step)
    if schedule.observe_validation_error(result.top1_error):
        logger.log({"event": "validation error plateaued: lr divided"}, progress.step)


def _minutes_due(cfg: ExperimentConfig, last_save: float) -> bool:
    every = cfg.checkpoint.every_minutes
    return bool(every) and time.monotonic() - last_save > 60 * every


def _record_placement(run_dir: Path, info: DistInfo, device: torch.device) -> None:
    """Each rank writes where it runs (`ranks/rank-NNNNN.json`, this attempt's), to check placement later."""
    import json

    folder = run_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    record = {**info.describe(), "device": str(device), "pid": os.getpid(), "time": time.time()}
    (folder / f"rank-{info.rank:05d}.json").write_text(json.dumps(record, sort_keys=True) + "\n")


def _replay_epoch(loader, epoch: int) -> int:
    """Restart `epoch` from its first step (another world size cannot continue mid-epoch); returns that step.

    Every epoch has `steps_per_epoch` steps whatever the world size (the global batch is fixed), so the
    step at an epoch's start is `epoch * steps_per_epoch` and the schedule by step stays the same."""
    loader.restart_epoch(epoch)
    return epoch * loader.steps_per_epoch


def _restore_rank_state(state: dict, loader) -> None:
    set_rng_state(state["rng"])
    loader.load_state_dict(state["loader"])


class _Clock:
    """The run's training wall time: what earlier starts of the run spent (from the checkpoint) plus this one's."""

    def __init__(self, before: float) -> None:
        self.before, self.start = before, time.monotonic()

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.data_time = 0.0
        self.loss_sum = torch.zeros(())
        self.hits = torch.zeros((), dtype=torch.long)
        self.samples = 0
        self.steps = 0

    def add(self, loss: torch.Tensor, hits: torch.Tensor, samples: int) -> None:
        # Accumulate on the device: no host sync per step.
        self.loss_sum = self.loss_sum.to(loss.device) + loss
        self.hits = self.hits.to(hits.device) + hits
        self.samples += samples
        self.steps += 1

    def eta_s(self, remaining_steps: int) -> float:
        """Seconds left at this window's pace (its steps include any evaluation or checkpoint within it)."""
        return remaining_steps * (time.perf_counter() - self.start) / max(self.steps, 1)

    def report(self, info: DistInfo, device: torch.device) -> dict:
        elapsed = time.perf_counter() - self.start
        loss_sum, hits, samples, data_time = dist.all_reduce_sum(
            [float(self.loss_sum), float(self.hits), float(self.samples), self.data_time])
        steps = max(self.steps, 1)
        return {
            "loss": loss_sum / (steps * info.world_size),
            "train_top1_error": 100.0 * (1 - hits / max(samples, 1)),
            "images_per_s": samples / max(elapsed, 1e-9),
            "data_wait_fraction": data_time / info.world_size / max(elapsed, 1e-9),
            "memory_mb": peak_memory_mb(device),
        }


def say_error(error: Exception, primary: bool) -> int:
    """The exit code for a training's error, after its one `error:` line where it is one a user can fix (a
    dataset, a disk, a lock, a hang); FAILED, and nothing said, for the unexpected (its traceback says it)."""
    hung = dist.hang_error(error)
    code = exit_codes.exit_code_of(hung or error)
    # Every rank ends with the same error (dist.on_every_rank): said once; a hang by whichever rank saw it.
    if code != exit_codes.FAILED and (primary or hung):
        print(f"error: {hung or error}", file=sys.stderr, flush=True)
    return code

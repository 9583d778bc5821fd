"""Training one run: the run directory taken, the data, schedule and engine set up, the newest intact checkpoint
resumed, then the loop, top to bottom, until the schedule ends or a stop signal; the final evaluation last, and
the trained net logged to W&B as a model artifact (`pipeline.train.model_artifact`).

    outcome = train(cfg)      # Finished (its final evaluation) or Interrupted (a checkpoint, then the signal)

Runs as one process, under torchrun or as a SLURM task: rank and world size come from the environment
(`pipeline.dist`). Each periodic training record carries `elapsed_s`, the run's training wall time over all its
starts (kept in the checkpoint), and `eta_s`, the steps left at the pace of the steps since the previous record.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline import dist
from pipeline.checkpoint.policy import SavePolicy
from pipeline.checkpoint.run_checkpoints import RunCheckpoints
from pipeline.config import ExperimentConfig, loggable_config
from pipeline.dist import DistInfo, dist_info_from_env, exit_codes
from pipeline.dist.process import StopSignal, resolve_device, seed_everything, use_task_cpus
from pipeline.engine import build_engine
from pipeline.evaluate.layer_responses import LayerResponses
from pipeline.evaluate.protocols import EvaluationInterrupted, evaluate
from pipeline.models import build_model
from pipeline.run.layout import RunDir
from pipeline.run.lock import RunLock
from pipeline.run.logger import make_logger
from pipeline.run.results import update_results, write_layer_responses
from pipeline.train.model_artifact import log_model
from pipeline.train.outcome import Finished, Interrupted, TrainOutcome
from pipeline.train.progress import Clock, Progress, Window
from pipeline.train.schedule import LRSchedule
from pipeline.train.setup import (
    check_run_directory,
    checkpoint_files,
    log_start,
    open_data,
    own_run_directory,
    remove_if_empty,
    resume,
)

log = logging.getLogger("pipeline.train")


def train(cfg: ExperimentConfig, info: DistInfo | None = None,
          on_start: Callable[[], None] | None = None) -> TrainOutcome:
    """Train (or resume) the run `cfg` describes.

    The primary rank first takes the run directory's lock (`pipeline.run.lock`): a second training into the
    same directory is refused there, before anything is written; so is a config that changes what the run's
    checkpoints hold (`pipeline.run.continuity`). The start is accepted, and the config written, once the data and
    the directory are checked; a refused start removes the directories it made. `on_start` runs on the primary rank
    (a SLURM job records its id beside the run). Errors a user can fix end every rank the same way
    (`dist.on_every_rank`): one error, an exit code from `pipeline.dist.exit_codes`, no rank left waiting."""
    info = info or dist_info_from_env()
    device = resolve_device(cfg.run.device, info)
    use_task_cpus()
    if info.distributed or cfg.engine.name == "deepspeed":  # DeepSpeed needs a process group, even of one
        info = dist.with_free_port(info)
        dist.init_process_group(info, device.type, cfg.engine.timeout_minutes)
    lock = RunLock(RunDir.of(cfg).path) if info.is_primary else None
    created: list[Path] = []  # the directories the primary made for the run
    try:
        dist.on_every_rank(lambda: own_run_directory(cfg, info, lock, created, on_start))
        return _train(cfg, info, device, lock)
    finally:
        if lock is not None:
            lock.release()
            remove_if_empty(created)  # left empty: the start was refused before it wrote its config
        dist.destroy_process_group()


def _train(cfg: ExperimentConfig, info: DistInfo, device: torch.device, lock: RunLock | None) -> TrainOutcome:
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    run = RunDir.of(cfg)
    # What writes into the run directory asks the lock first (the primary's): a run whose lock was taken over while
    # the job was paused ends with one line (exit code 4) before it writes anything more.
    checkpoints = RunCheckpoints(run.checkpoints, cfg.checkpoint, info, owner=lock)
    # What a user can get wrong (an unwritable directory, a missing or damaged dataset) fails on every rank alike.
    # Two steps: opening the data has collectives of its own (one rank validates it for all), which every rank
    # must reach, so nothing that can fail on one rank alone may come before them in the same step. The data first:
    # it writes nothing, so a start refused for its data leaves the run directory as it found it.
    train_loader, eval_loader, warnings = dist.on_every_rank(lambda: open_data(cfg, info, device))
    dist.on_every_rank(lambda: check_run_directory(cfg, info, device, checkpoints))
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, train_loader.steps_per_epoch, cfg.data.batch_size)
    micro_batch = cfg.data.batch_size // info.world_size
    engine = build_engine(cfg.engine, build_model(cfg.model), cfg.optim, schedule.lr(0), info, device, micro_batch)
    resumed = resume(checkpoints, engine, schedule, train_loader, info, run)
    progress = resumed.progress
    logger = dist.on_every_rank(lambda: make_logger(info.is_primary, run.path, cfg.logging, cfg.run.name,
                                                    loggable_config(cfg), progress.step,
                                                    owns=lock.holds if lock is not None else None))
    clock = Clock(progress.elapsed_s)
    stop = StopSignal().install()
    policy = SavePolicy(cfg.checkpoint, lambda: stop.received is not None, checkpoints)

    def save(background: bool, metrics: dict | None = None) -> float:
        """A periodic save is written in the background while training goes on; a stop's and the last are not.
        Returns the seconds training waited for it."""
        started = time.monotonic()
        files = checkpoint_files(cfg, info, engine, progress, clock, schedule, train_loader)
        checkpoints.save(progress.step, files, metrics, background)
        policy.saved()
        return time.monotonic() - started

    total_steps = schedule.total_steps
    log_start(logger, cfg, info, device, schedule, train_loader, warnings, resumed)
    window = Window()
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
                dist.note_progress()  # the hang watchdog's clock starts again (`dist.watchdog`)
                progress.step += 1
                window.add(loss, hits, labels.numel())

                if progress.step % cfg.logging.every_steps == 0 or progress.step == total_steps:
                    record = {"epoch": progress.epoch, "lr": lr, **window.report(info, device),  # all-reduced
                              "elapsed_s": clock.elapsed(), "eta_s": window.eta_s(total_steps - progress.step)}
                    logger.log(record, progress.step)
                    if schedule.observe_train_error(progress.step, record["train_top1_error"]):
                        logger.log({"event": f"warm-up ended: lr {schedule.lr(progress.step):g}"}, progress.step)
                    window = Window()
                if cfg.eval.every_steps and progress.step % cfg.eval.every_steps == 0:
                    _evaluate_and_log(engine, eval_loader, schedule, logger, progress)

                decision = policy.after_step(progress.step)  # a collective at its checks, not every step
                save_s = save(background=not decision.stopping) if decision.save else 0.0
                if progress.step == first_step + 1:
                    # The slow first step is over. From now on a rank ends (one line, exit code 8, the lock released)
                    # after engine.hang_timeout_minutes without progress: each step, each evaluation batch, each
                    # collective (an evaluation's or a save's end) and each checkpoint file written is progress, so
                    # a long evaluation or save trips it only where one batch, file or wait takes that long. An
                    # epoch's loader restart comes right after such a collective and takes seconds.
                    dist.watch_for_hangs(cfg.engine.hang_timeout_minutes,
                                         last_words=[lock.release] if lock is not None else [])
                if decision.stopping:
                    logger.log({"event": f"stopped by {stop.received or 'a signal on another rank'}",
                                **_stop_timing(stop, save_s)}, progress.step)
                    return Interrupted(progress.step, stop.received)
                if progress.step >= total_steps:
                    epoch_done = False  # stopped mid-epoch: the schedule ended here
                    break
                data_start = time.perf_counter()
            if epoch_done:
                progress.epoch += 1
                if cfg.eval.every_epochs and progress.epoch % cfg.eval.every_epochs == 0:
                    _evaluate_and_log(engine, eval_loader, schedule, logger, progress)
                if policy.at_epoch_end(progress.step, total_steps):
                    save(background=True)
        outcome = _final_evaluation(cfg, info, run, engine, eval_loader, logger, progress, stop, save, lock)
        if isinstance(outcome, Finished):
            # Past the final evaluation's last collective, no rank waits on this one any more: the primary's export
            # of the trained net may take its time, unwatched (a stop signal now is only noted: the run is done).
            dist.stop_watching()
            log_model(cfg, info, run, logger, outcome.step, lock)
        return outcome
    finally:
        dist.stop_watching()  # what follows (W&B's close) may take its time, and has no peer to wait for
        checkpoints.close()
        stop.uninstall()
        logger.close()  # after the last save: W&B's teardown can fail (its service shares the job's signals)


def _evaluate_and_log(engine, eval_loader, schedule: LRSchedule, logger, progress: Progress) -> None:
    engine.before_evaluation()
    result = evaluate(engine.predict, eval_loader, progress=_batch_done)
    logger.log({"epoch": progress.epoch, **result.as_dict("val_")}, progress.step)
    if schedule.observe_validation_error(result.top1_error):
        logger.log({"event": "validation error plateaued: lr divided"}, progress.step)


def _final_evaluation(cfg: ExperimentConfig, info: DistInfo, run: RunDir, engine, eval_loader, logger,
                      progress: Progress, stop: StopSignal, save: Callable[..., None],
                      lock: RunLock | None) -> TrainOutcome:
    """The centre evaluation of the trained weights, saved with them and recorded in results.json.

    A signal now would otherwise go unheard: the loop that checks for it is over. The evaluation stops for it,
    and the weights are saved for the requeued job, which goes straight to this evaluation. What every rank must
    do together comes first: a rank that sees the signal before its first batch leaves the evaluation's loop at
    once, and would otherwise skip the BN buffers' broadcasts that the others make at theirs."""
    logger.log({"event": "final evaluation"}, progress.step)
    responses = LayerResponses(engine.module) if cfg.eval.layer_responses else contextlib.nullcontext()
    engine.before_evaluation()
    try:
        with responses:
            final = evaluate(engine.predict, eval_loader, should_stop=lambda: stop.received is not None,
                             progress=_batch_done)
    except EvaluationInterrupted:
        save_s = save(background=False)
        logger.log({"event": f"stopped by {stop.received or 'a signal on another rank'} during the final "
                             "evaluation", **_stop_timing(stop, save_s)}, progress.step)
        return Interrupted(progress.step, stop.received)
    stds = responses.result() if cfg.eval.layer_responses else None
    outcome = Finished(progress.step, progress.epoch, cfg.data.eval_split, final.samples, final.top1_error,
                       final.top5_error)
    # Logged as a validation record too: the last point of the validation curve (Figs. 4 and 6).
    logger.log({"kind": "final", "epoch": progress.epoch, **final.as_dict("val_")}, progress.step)
    logger.summary(outcome.as_dict())
    save(background=False, metrics={"val_top1_error": final.top1_error})
    dist.on_every_rank(lambda: _record_results(run, outcome, stds, lock) if info.is_primary else None)
    return outcome


def _batch_done(samples: int) -> None:
    """An evaluation batch is progress for the hang watchdog: a long evaluation is not a hung one."""
    dist.note_progress()


def _stop_timing(stop: StopSignal, save_s: float) -> dict:
    """What a stop took: its checkpoint's save, and (where this rank received the signal) the seconds from the
    signal to the checkpoint written, which must fit in SLURM's KillWait (`launch.submit.kill_wait`)."""
    timing = {"save_s": round(save_s, 3)}
    if stop.received_at is not None:
        timing["stop_s"] = round(time.monotonic() - stop.received_at, 3)
    return timing


def _record_results(run: RunDir, outcome: Finished, stds: dict | None, lock: RunLock | None) -> None:
    if lock is not None:
        lock.ensure_held()
    update_results(run.path, "train", outcome.as_dict())
    if stds is not None:
        write_layer_responses(run.path, {**stds, "samples": outcome.samples, "split": outcome.split,
                                         "step": outcome.step})


def say_error(error: Exception, primary: bool) -> int:
    """The exit code for a training's error, after its one `error:` line where it is one a user can fix (a
    dataset, a disk, a lock, a hang); FAILED, and nothing said, for the unexpected (its traceback says it)."""
    hung = dist.hang_error(error)
    code = exit_codes.exit_code_of(hung or error)
    # Every rank ends with the same error (dist.on_every_rank): said once; a hang by whichever rank saw it.
    if code != exit_codes.FAILED and (primary or hung):
        print(f"error: {hung or error}", file=sys.stderr, flush=True)
    return code

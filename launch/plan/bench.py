"""`python -m launch bench --models M [M ...] data.root=DIR [overrides] [--steps S] (--nproc N | --slurm [resources])`

Measures each model's training images/s on this hardware and writes a throughput profile (`launch.plan.profile`)
for `launch plan`. A measurement is a short real training run: the model's paper config (or the config
given), on the real shards of `data.root`, with its configured precision, engine and global batch, cut to
`--warmup-steps + --steps` iterations, with no checkpoints on the way, no periodic evaluation and W&B off,
in a temporary run directory. It runs through `launch.submit.local.run_local` in N processes, or with `--slurm`
as a SLURM job of the given resources (waited for). The training images/s is read from the run's
`metrics.jsonl`, over the logging windows after the warm-up steps. The evaluation images/s (forward only,
centre views) is timed over training's final evaluation of the whole evaluation split, when that takes
long enough to time (at least `MIN_EVAL_SECONDS`); `launch plan` otherwise derives it from training's.
The start-up (`startup_s`) is the run's wall time less its steps at the timed rate and its final evaluation:
process start, imports, dataset open, model build, the warm-up steps' extra time, the final save, teardown
(W&B is off here; a run logging to W&B pays its start as well).

Model names map to the paper configs by their `model.name` (resnet50 -> configs/imagenet/resnet50.yaml,
cifar_resnet110 -> configs/cifar10/resnet110.yaml); a registered net without a paper config (cifar_resnet8)
runs with its family's base config. A path to a config is taken as is.

An existing profile at `--out` measured on the same kind of machine is extended: models measured now
replace their old entries, the others stay.
"""

from __future__ import annotations

import functools
import math
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launch.plan.bench_results import EvalTimer, merged_profile, startup_seconds, summary, train_throughput
from launch.plan.profile import REPO, machine_info, software_versions, write_profile
from launch.plan.requests import BenchRequest
from launch.submit.checks import check_startable
from launch.submit.jobs import TrainJob
from launch.submit.local import run_local, stopped_by_user
from launch.submit.slurm import make_executor, prepare_run
from launch.submit.waiting import cancel, wait_for_job
from pipeline.config import ConfigError, ExperimentConfig, SlurmConfig, load_config
from pipeline.data.dataset import DatasetError, read_manifest
from pipeline.dist import dist_info_from_env
from pipeline.models.registry import get_spec
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics

PAPER_CONFIG_DIRS = (REPO / "configs" / "imagenet", REPO / "configs" / "cifar10")
FAMILY_BASE = {"imagenet": REPO / "configs" / "imagenet" / "_base.yaml",
               "cifar": REPO / "configs" / "cifar10" / "_base.yaml"}
MIN_EVAL_SECONDS = 1.0  # a shorter final evaluation is not timed: the clock here resolves ~0.05 s


def bench(request: BenchRequest) -> int:
    """The `bench` command; returns the exit code (1 if a model's measurement failed)."""
    models, overrides = request.models, request.overrides
    if request.steps < 1 or request.warmup_steps < 0:
        raise ConfigError(f"--steps must be at least 1 and --warmup-steps at least 0 (got {request.steps}, "
                          f"{request.warmup_steps})")
    out = Path(request.out)
    plans = [_prepare(i, model, overrides, request) for i, model in enumerate(models)]  # all checked before a run
    nets = [plan.model for plan in plans]
    if len(set(nets)) < len(nets):
        raise ConfigError(f"--models names one net twice ({', '.join(nets)}): a profile holds one entry per net")
    work = Path(tempfile.mkdtemp(prefix=".bench-", dir=out.resolve().parent))  # the job must see it on SLURM
    print(f"bench: {len(plans)} model(s), {request.warmup_steps} warm-up + {request.steps} timed steps each; "
          f"run directories under {work}", flush=True)
    measured: dict[str, dict] = {}
    failed: list[str] = []
    stopped = False
    machine: dict | None = None
    software: dict | None = None
    if request.slurm:
        outcomes = _run_slurm(plans, work, request)
    else:
        outcomes = (_run_local(plan, work, request) for plan in plans)
    for plan, (code, extra) in zip(plans, outcomes):
        run_dir = work / plan.name
        if stopped_by_user(code):  # Ctrl-C or a kill: stop here, keep what was measured
            print(f"bench: stopped during {plan.model} (exit code {code}); its run directories are removed",
                  file=sys.stderr, flush=True)
            failed.append(plan.model)
            stopped = True
            break
        if code != 0:
            print(f"bench: {plan.model} failed (exit code {code}); its run directory is kept: {run_dir}",
                  file=sys.stderr, flush=True)
            failed.append(plan.model)
            continue
        try:
            entry = _entry(plan, run_dir, request, extra.get("eval_window"), extra.get("wall_s"))
        except ConfigError as e:
            print(f"bench: {plan.model}: {e}; its run directory is kept: {run_dir}", file=sys.stderr, flush=True)
            failed.append(plan.model)
            continue
        measured[plan.model] = entry
        machine, software = extra.get("machine", machine), extra.get("software", software)
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"bench: {plan.model}: {entry['images_per_s']:.1f} images/s on {entry['world_size']} process(es) "
              f"({entry['images_per_s_per_gpu']:.1f} per process)", flush=True)
    if stopped or not failed:  # a failed run is kept to be read; a stopped one holds nothing worth keeping
        shutil.rmtree(work, ignore_errors=True)
    if not measured:
        print("bench: nothing measured; no profile written", file=sys.stderr)
        return 1
    machine = machine or machine_info()  # local runs: this machine, asked after the ranks are done with it
    software = software or software_versions()
    launcher = ({"launcher": "slurm", "resources": asdict(_resources(request, plans[0].cfg))} if request.slurm
                else {"launcher": "local", "nproc": request.nproc})
    profile = merged_profile(out, measured, machine, software, launcher)
    write_profile(out, profile)
    print(summary(profile))
    print(f"profile written to {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# --- what to run ----------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """One model to measure: its config file, the overrides that make it a benchmark, the resolved config."""

    model: str  # the profile's key: the net's model.name
    config: Path
    own: list[str]  # what the model name added to the config (model.name for a family's base config)
    overrides: list[str]
    cfg: ExperimentConfig
    name: str  # of its run directory


@functools.lru_cache(maxsize=1)
def paper_configs() -> dict[str, Path]:
    """model.name -> its paper config: the file named after the net (resnet34.yaml, not resnet34_b.yaml)."""
    found: dict[str, Path] = {}
    for folder in PAPER_CONFIG_DIRS:
        for path in sorted(folder.glob("*.yaml")):
            if path.name.startswith("_"):
                continue
            name = load_config(path).model.name
            if name not in found or path.stem == name.removeprefix("cifar_"):
                found[name] = path
    return found


def resolve_model(model: str) -> tuple[Path, list[str]]:
    """The config (and any override it needs) a `--models` item stands for."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config not found: {model}")
        return path, []
    configs = paper_configs()
    if model in configs:
        return configs[model], []
    try:
        spec = get_spec(model)
    except KeyError:
        raise ConfigError(f"unknown model {model!r}: not a config file, and not one of the paper's models "
                          f"({', '.join(sorted(configs))}) or another registered net") from None
    return FAMILY_BASE[spec.family], [f"model.name={model}"]


def bench_overrides(steps: int, warmup: int) -> list[str]:
    """What turns a training config into a measurement of `warmup + steps` iterations (placement aside)."""
    # Windows of gcd(warmup, steps) steps: one ends exactly where the warm-up does, so none mixes the two.
    every = math.gcd(warmup, steps)
    return ["schedule.unit=iteration", f"schedule.total={warmup + steps}", "schedule.milestones=[]",
            "eval.every_epochs=0", "eval.every_steps=0", "eval.layer_responses=false", "checkpoint.every_steps=0",
            "checkpoint.every_minutes=0", "checkpoint.at_epoch_end=false", f"logging.every_steps={every}",
            "logging.wandb_mode=disabled"]


def _prepare(index: int, model: str, overrides: list[str], request: BenchRequest) -> _Plan:
    config, own = resolve_model(model)
    all_overrides = [*own, *overrides, *bench_overrides(request.steps, request.warmup_steps)]
    cfg = load_config(config, all_overrides)
    _check_data(cfg)
    world = _world_size(request, cfg)
    if cfg.data.batch_size % world:
        raise ConfigError(f"{model}: data.batch_size ({cfg.data.batch_size}) is not divisible by the "
                          f"{world} processes")
    # Profiles are keyed by the net (`launch plan` looks a run's model.name up), whatever named it here.
    return _Plan(cfg.model.name, config, own, all_overrides, cfg, f"bench-{index}-{cfg.model.name}")


def _check_data(cfg: ExperimentConfig) -> None:
    """Real shards are what is measured: refuse a data.root without a prepared dataset before starting."""
    if cfg.data.backend == "synthetic":
        print("bench: data.backend=synthetic: the input pipeline is not measured", file=sys.stderr)
        return
    try:
        splits = read_manifest(cfg.data.root).splits
    except DatasetError as e:
        raise ConfigError(f"{e}; pass data.root=<a dataset prepared by `python -m data_prep`>") from None
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split not in splits:
            raise ConfigError(f"{cfg.data.root}: no split {split!r} (has: {', '.join(splits)})")


def _world_size(request: BenchRequest, cfg: ExperimentConfig) -> int:
    if not request.slurm:
        return request.nproc
    return _resources(request, cfg).gpus


def _resources(request: BenchRequest, cfg: ExperimentConfig) -> SlurmConfig:
    return request.resources.applied_to(cfg.slurm)  # the flags mean what they mean for `submit`


# --- running it -----------------------------------------------------------------------------------------------

def _run_local(plan: _Plan, work: Path, request: BenchRequest) -> tuple[int, dict]:
    print(f"bench: {plan.model}: {request.nproc} process(es), {plan.config}", flush=True)
    overrides = [*plan.overrides, f"run.out_dir={work}", f"run.name={plan.name}"]
    started = time.perf_counter()
    with EvalTimer(RunDir(work / plan.name).metrics) as timer:
        code = run_local(str(plan.config), overrides, request.nproc)
    return code, {"eval_window": timer.window(), "wall_s": time.perf_counter() - started}


def _run_slurm(plans: list[_Plan], work: Path, request: BenchRequest):
    """Submit one job per model (they may run side by side), then wait for each in turn."""
    for plan in plans:  # every job checked before the first is submitted
        check_startable(_resources(request, plan.cfg))
    jobs = []
    for plan in plans:
        _, run_dir = prepare_run(str(plan.config), [*plan.overrides, f"run.out_dir={work}", f"run.name={plan.name}"])
        executor = make_executor(RunDir(run_dir).slurm_logs, _resources(request, plan.cfg), plan.name)
        job = executor.submit(BenchJob(run_dir))
        print(f"bench: {plan.model}: submitted job {job.job_id}", flush=True)
        jobs.append(job)
    for plan, job in zip(plans, jobs):
        print(f"bench: waiting for job {job.job_id} ({plan.model})", flush=True)
        try:
            result = wait_for_job(job, "bench")[0]  # every task returns the same record; rank 0's holds the timing
        except KeyboardInterrupt:  # this job is cancelled; nobody would read what the others measure either
            for other in jobs:
                if other is not job:
                    cancel(str(other.job_id), "bench")
            yield 128 + signal.SIGINT, {}
            return
        except Exception as e:  # submitit raises the job's own failure: report it, go on with the others
            print(f"bench: job {job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}",
                  file=sys.stderr)
            yield 1, {}
            continue
        if result.get("interrupted"):  # cancelled (SIGTERM); the other jobs are not
            print(f"bench: job {job.job_id} was stopped before it finished", file=sys.stderr)
            yield 1, {}
            continue
        yield 0, result


class BenchJob:
    """The callable of a SLURM benchmark job: train the run in `run_dir` like any job, and say where it ran."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> dict:
        primary = dist_info_from_env().is_primary
        started = time.perf_counter()  # the job's process is up: its interpreter's own start is not counted
        with EvalTimer(RunDir(self.run_dir).metrics, enabled=primary) as timer:
            result = TrainJob(self.run_dir)()
        return {"interrupted": bool(result.get("interrupted")), "eval_window": timer.window(),
                "wall_s": time.perf_counter() - started, "machine": machine_info(), "software": software_versions()}

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit  # submitit: only where jobs are submitted or run

        return submitit.helpers.DelayedSubmission(self)


def _entry(plan: _Plan, run_dir: Path, request: BenchRequest, eval_window: dict | None,
           wall_s: float | None = None) -> dict:
    cfg = plan.cfg
    rate, wait, steps = train_throughput(read_metrics(run_dir), request.warmup_steps)
    world = _world_size(request, cfg)
    entry = {"config": " ".join([_shown(plan.config), *plan.own]), "images_per_s": rate,
             "images_per_s_per_gpu": rate / world, "world_size": world, "precision": cfg.engine.precision,
             "engine": cfg.engine.name, "zero_stage": cfg.engine.zero_stage, "channels_last": cfg.engine.channels_last,
             "compile": cfg.engine.compile, "batch_size": cfg.data.batch_size, "image_size": cfg.data.image_size,
             "data_backend": cfg.data.backend, "steps": steps, "warmup_steps": request.warmup_steps,
             "data_wait_fraction": wait, "eval_images_per_s": None, "eval_images_per_s_per_gpu": None,
             "startup_s": None if wall_s is None else startup_seconds(wall_s, request.warmup_steps + request.steps,
                                                                      cfg.data.batch_size, rate, eval_window),
             "eval_batch_per_gpu": cfg.data.eval_batch_per_gpu, "eval_note": None}
    if eval_window and eval_window["seconds"] >= MIN_EVAL_SECONDS:
        eval_rate = eval_window["samples"] / eval_window["seconds"]
        entry.update(eval_images_per_s=eval_rate, eval_images_per_s_per_gpu=eval_rate / world,
                     eval_note=f"final centre evaluation: {eval_window['samples']} images in "
                               f"{eval_window['seconds']:.1f} s")
    else:
        entry["eval_note"] = (f"not timed: the final evaluation took under {MIN_EVAL_SECONDS:g} s"
                              if eval_window else "not timed: its start or end was not seen")
    return entry


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())



"""`python -m launch plan configs/tables/<table>.yaml [overrides] [--profile FILE] [resources] [--array-parallelism K]
[--nodes N [N ...]] [scaling assumptions]`

What a table costs before it is submitted: per row and in total, GPU-hours of training and of evaluation,
and wall time. The images/s come from a profile measured by `launch bench` or, without one, from the
reference figures in configs/throughput/reference.json, which were published elsewhere and not measured
here (the output says so). The arithmetic, whose assumptions are also printed under the table:

- training images = steps x global batch. An epoch schedule has floor(train split / global batch) steps per
  epoch, as the loaders do; split sizes come from data.root's manifest where there is one, else from the
  paper's datasets (ImageNet 1,281,167 train / 50,000 val; CIFAR-10 50,000 train / 10,000 test);
- a step on G GPUs over M nodes (launch.plan.scaling): compute = global batch / G / the per-GPU images/s, plus
  the part of the gradient all-reduce that backward does not hide; the ring all-reduce takes
  2 (G-1)/G x gradient bytes / the slowest link's bandwidth (NVLink on one node, the node's network on
  several; both options) plus a latency per bucket;
- evaluation images, in centre views: training's periodic evaluations (eval.every_epochs / every_steps)
  and its final centre evaluation, each over the evaluation split, plus the evaluation `launch reproduce`
  submits after training (tencrop: 10 views; multiscale: the whole image at each of eval.scales, taken as 4:3
  images costing in proportion to their pixels; a `responses` table adds a centre pass for the layer
  responses; a centre table needs nothing more than training's final evaluation); on G GPUs they take
  views / (G x per-GPU evaluation images/s);
- checkpoints: each save blocks training for a snapshot of weights, momentum and BN buffers to host memory
  (the write goes on in the background); saves per epoch follow checkpoint.at_epoch_end / every_steps /
  every_minutes, plus the final one;
- start-up: every start of a job (training, each requeue, the evaluation job) and the report pay the
  profile's measured start-up (process start, imports, dataset open, model build); none without one;
- a run's wall time = its steps + evaluations + snapshots + start-ups, then its evaluation job; its
  GPU-hours = GPUs x that / 3600;
- img/GPU: each GPU's share of a run's global batch; a row below the share its recipe was made for
  (`data.recipe_batch_per_gpu`) gets a note saying what that changes and the ways out;
- a model the profile lacks is scaled by multiply-adds per image from the nearest measured net of its
  family, else from the reference ResNet-50, and its row says so;
- table wall time = the makespan of the runs (each: training, then its evaluation) placed longest first onto
  at most K (--array-parallelism) concurrent jobs, then the report.

`--nodes N [N ...]` compares node counts. Where a run spans several GPUs (ImageNet), each count is nodes per
run: the table is costed at the first count, and a line per row and count gives GPUs, step time, compute,
all-reduce and its exposed part, evaluation and checkpoint pauses per epoch, images/s, speed-up against
1 node and efficiency, then the table's GPU-hours and wall time per count. Where every run uses one GPU
(CIFAR), more nodes cannot speed a run up: each count is the cluster's size, running --node-gpus runs a node
at once, and the table's makespan per count is shown instead of a speed-up.

This module is the arithmetic; what the command prints, and the command itself, are `launch.plan.printing`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from launch.plan.scaling import Cluster, StepTime, checkpoint_saves, model_size, run_step, snapshot_seconds
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.config.per_gpu_batch import gpu_share
from pipeline.tables.spec import load_table, planned_runs, unique_runs

PAPER_SPLITS: Dict[str, Tuple[str, Dict[str, int]]] = {
    "imagenet": ("ImageNet", {"train": 1_281_167, "val": 50_000}),
    "cifar": ("CIFAR-10", {"train": 50_000, "test": 10_000}),
}
MULTISCALE_ASPECT = 4 / 3  # ImageNet's typical 500x375: a whole image at shorter side s has s * 4s/3 pixels


@dataclass(frozen=True)
class Rate:
    """Images/s per GPU of one run's training and of its evaluation (centre views), and how they were had."""

    train: float
    eval: float
    notes: Tuple[str, ...] = ()
    eval_measured: bool = False
    startup_s: Optional[float] = None  # a job's start-up, as `launch bench` measured it (None: not measured)


@dataclass(frozen=True)
class RunCost:
    """One training run of a table with its evaluations, in images and seconds."""

    row: int
    label: str
    model: str
    seed: int
    gpus: int  # processes of its job: nodes x tasks per node (one per GPU)
    train_steps: int
    train_images: int
    train_eval_views: float  # training's own evaluations (periodic and final), in centre views
    protocol_views: float  # the table's protocol, evaluated after training, in centre views
    rate: Rate
    step: StepTime  # compute and the all-reduce of one step on `gpus` GPUs over `nodes` nodes
    nodes: int = 1
    steps_per_epoch: int = 1
    saves: float = 0.0  # checkpoints written by training
    snapshot_s: float = 0.0  # the blocking part of one save
    time_limit_s: float = math.inf
    max_requeues: int = 0
    images_per_gpu: float = 0.0  # of the global batch
    below_recipe: Optional[str] = None  # the warning when a GPU gets fewer images than the recipe was made for

    @property
    def startup_s(self) -> float:
        return self.rate.startup_s or 0.0

    @property
    def epochs(self) -> float:
        return self.train_steps / self.steps_per_epoch

    @property
    def steps_s(self) -> float:
        """Training's steps, without its pauses: compute and the exposed all-reduce."""
        return self.train_steps * self.step.total_s

    @property
    def checkpoint_s(self) -> float:
        return self.saves * self.snapshot_s

    @property
    def train_eval_s(self) -> float:
        """Training's own evaluations (periodic and final) on its GPUs."""
        return self.train_eval_views / self.rate.eval / self.gpus

    @property
    def protocol_s(self) -> float:
        """The table's evaluation after training, as a job of its own on as many GPUs (0: none)."""
        return self.protocol_views / self.rate.eval / self.gpus + self.startup_s if self.protocol_views else 0.0

    @property
    def training_job_s(self) -> float:
        """Wall time of the training job over all its starts: steps, evaluations, saves, a start-up per start."""
        return self._work_s + (1 + self.requeues) * self.startup_s

    @property
    def requeues(self) -> int:
        """How many times the training job outlives its time limit (and is requeued)."""
        if not self.time_limit_s:
            return 0
        return max(0, math.ceil((self._work_s + self.startup_s) / self.time_limit_s) - 1)

    @property
    def _work_s(self) -> float:
        return self.steps_s + self.checkpoint_s + self.train_eval_s

    @property
    def wall_s(self) -> float:
        """Training, then the protocol's evaluation on as many GPUs."""
        return self.training_job_s + self.protocol_s

    @property
    def gpu_s_train(self) -> float:
        return self.gpus * (self.training_job_s - self.train_eval_s)

    @property
    def gpu_s_eval(self) -> float:
        return self.gpus * (self.train_eval_s + self.protocol_s)

    @property
    def train_images_per_s(self) -> float:
        """Training's images/s over an epoch with its pauses (evaluations, saves), without the start-ups."""
        return self.train_images / self._work_s


@dataclass
class RowCost:
    index: int
    label: str
    model: str
    runs: List[RunCost]
    same_as: Optional[str] = None  # the row whose runs these are (a figure showing one run in two panels)


@dataclass
class TablePlan:
    table: str
    title: str
    rows: List[RowCost]
    array_parallelism: int
    throughput: str  # where the images/s come from, as printed
    report_s: float = 0.0  # the report after the last run: a start-up (reading files and drawing is quick)
    assumptions: List[str] = field(default_factory=list)

    @property
    def runs(self) -> List[RunCost]:
        return [run for row in self.rows for run in row.runs]

    @property
    def makespan_s(self) -> float:
        """The table's wall time: its runs on at most `array_parallelism` jobs at once, then the report."""
        return makespan([run.wall_s for run in self.runs], self.array_parallelism) + self.report_s

    @property
    def gpu_s(self) -> float:
        return sum(run.gpu_s_train + run.gpu_s_eval for run in self.runs)


# --- the arithmetic -------------------------------------------------------------------------------------------

def split_sizes(cfg: ExperimentConfig) -> Tuple[Dict[str, int], str]:
    """Sample count of each split: from data.root's manifest, else the paper's dataset (by the net's family)."""
    from pipeline.data.dataset import DatasetError, read_manifest
    from pipeline.models.registry import get_spec

    try:
        manifest = read_manifest(cfg.data.root)
        return ({name: int(split["num_samples"]) for name, split in manifest["splits"].items()},
                f"the manifest of {cfg.data.root}")
    except DatasetError:
        dataset, sizes = PAPER_SPLITS[get_spec(cfg.model.name).family]
        sizes_text = ", ".join(f"{n:,} {split}" for split, n in sizes.items())
        return sizes, f"the paper's {dataset} ({sizes_text}; no manifest at data.root={cfg.data.root})"


def split_size(sizes: Dict[str, int], split: str, source: str) -> int:
    if split not in sizes:
        raise ConfigError(f"split {split!r} has no known size: {source} gives {', '.join(sizes)}; pass "
                          "data.root=<the prepared dataset> so its manifest is read")
    return sizes[split]


def train_steps(cfg: ExperimentConfig, train_size: int) -> Tuple[int, int]:
    """(total steps, steps per epoch) of the config's schedule, as the trainer counts them."""
    from pipeline.data.base import train_steps_per_epoch
    from pipeline.train.schedule import LRSchedule

    per_epoch = train_steps_per_epoch(train_size, cfg.data.batch_size)
    if per_epoch < 1:
        raise ConfigError(f"{cfg.run.name}: the train split ({train_size} samples) is smaller than one global "
                          f"batch ({cfg.data.batch_size})")
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch=per_epoch, global_batch=cfg.data.batch_size)
    return schedule.total_steps, per_epoch


def training_evaluations(cfg: ExperimentConfig, total_steps: int, steps_per_epoch: int) -> int:
    """How many passes over the evaluation split training makes: its periodic ones and the final one.

    As the loop runs: every `every_steps` steps (the last step included), and at the end of every
    `every_epochs`-th epoch that ends before the schedule does (the final evaluation takes that one's place).
    """
    periodic = total_steps // cfg.eval.every_steps if cfg.eval.every_steps else 0
    if cfg.eval.every_epochs:
        periodic += ((total_steps - 1) // steps_per_epoch) // cfg.eval.every_epochs
    return periodic + 1


def protocol_views(protocol: str, cfg: ExperimentConfig) -> float:
    """The cost of evaluating one image with `protocol`, in centre views of the training side."""
    if protocol == "center":
        return 1.0
    if protocol == "tencrop":
        return 10.0
    return sum((side / cfg.data.image_size) ** 2 * MULTISCALE_ASPECT for side in cfg.eval.scales)


def table_evaluation_views(kind: str, protocol: str, cfg: ExperimentConfig) -> float:
    """Views per image of the evaluation a table adds after training, as `launch reproduce` submits it: a
    table's protocol other than the centre view, or Fig. 7's layer responses (a centre pass of their own);
    0 where training's final centre evaluation is the result."""
    from launch.reproduce.chain import table_evaluation

    evaluation = table_evaluation(kind, protocol)
    return protocol_views(evaluation.protocol, cfg) if evaluation else 0.0


def makespan(durations: Sequence[float], slots: int) -> float:
    """The finishing time of jobs placed longest first, each onto the slot that frees first (LPT)."""
    if slots < 1:
        raise ConfigError(f"--array-parallelism must be at least 1, got {slots}")
    loads = [0.0] * max(1, min(slots, len(durations)))
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)


# --- images/s -------------------------------------------------------------------------------------------------

class Rates:
    """Per-GPU images/s of a run: from the profile, else scaled by FLOPs from a measured or reference net."""

    def __init__(self, profile: dict, reference: dict) -> None:
        self.profile, self.reference = profile, reference
        self.measured = profile["kind"] == "measured"
        self.eval_factor = float(profile.get("eval_factor") or reference["eval_factor"])
        self._macs: Dict[str, int] = dict(reference.get("macs", {}))

    def for_run(self, cfg: ExperimentConfig, gpus: int) -> Rate:
        name, precision = cfg.model.name, cfg.engine.precision
        notes: List[str] = []
        base, source, scale = name, self.profile, 1.0
        if name not in self.profile["models"]:
            base, source = self._nearest(name)
            scale = (self._macs_at(base, source["models"][base]["image_size"])
                     / self._macs_at(name, cfg.data.image_size))
        entry = source["models"][base]
        label = f"{'measured' if source is self.profile and self.measured else 'reference'} {base}"
        if base != name:
            notes.append(f"not in the profile: the {label} scaled by FLOPs (multiply-adds per image)")
            if _family(base) != _family(name):
                notes.append(f"scaled from {base}, a net of another family and image size: likely optimistic, by "
                             "several times (a small net does not keep a GPU as busy); measure it with "
                             "`python -m launch bench`")
        train = self._at_precision(entry, precision, label, notes) * scale
        per_gpu_batch, run_batch = entry["batch_size"] / entry["world_size"], cfg.data.batch_size / gpus
        if per_gpu_batch != run_batch:
            notes.append(f"{label} ran {per_gpu_batch:g} images per GPU, this run {run_batch:g}: the per-GPU rate "
                         "changes with it")
        measured_eval = entry.get("eval_images_per_s_per_gpu")
        # A job's start-up hardly depends on the net: the measured one of the net the rate comes from.
        startup = entry.get("startup_s") if source is self.profile and self.measured else None
        if measured_eval and entry["precision"] == precision:
            return Rate(train, measured_eval * scale, tuple(notes), eval_measured=True, startup_s=startup)
        return Rate(train, train * self.eval_factor, tuple(notes), startup_s=startup)

    def _at_precision(self, entry: dict, precision: str, label: str, notes: List[str]) -> float:
        if entry["precision"] == precision:
            return float(entry["images_per_s_per_gpu"])
        by_precision = entry.get("by_precision") or {}
        if precision in by_precision:
            return float(by_precision[precision])
        notes.append(f"{label} ran in {entry['precision']}, this run uses {precision}")
        return float(entry["images_per_s_per_gpu"])

    def _nearest(self, name: str) -> Tuple[str, dict]:
        """The measured net of `name`'s family closest to it in FLOPs, else the reference's closest."""
        family = _family(name)
        own = [n for n in self.profile["models"] if self.measured and _family(n) == family]
        source = self.profile if own else self.reference
        candidates = own or list(self.reference["models"])
        target = self._macs_at(name, None)
        best = min(candidates, key=lambda n: abs(math.log(self._macs_at(n, None) / target)))
        return best, source

    def _macs_at(self, name: str, image_size: Optional[int]) -> float:
        """Multiply-adds of one image at `image_size` (None: the net's native side): conv cost grows with pixels."""
        from pipeline.models.registry import get_spec

        spec = get_spec(name)
        if name not in self._macs:
            from pipeline.models.complexity import measure  # counting a net takes a while: only when not listed

            self._macs[name] = measure(spec).macs
        return self._macs[name] * ((image_size or spec.resolution) / spec.resolution) ** 2


def _family(name: str) -> Optional[str]:
    from pipeline.models.registry import get_spec

    try:
        return get_spec(name).family
    except KeyError:
        return None


# --- the table ------------------------------------------------------------------------------------------------

def plan_table(table_path: str | Path, profile: dict, reference: dict, resources_of: Callable,
               seeds: Optional[List[int]] = None, overrides: Sequence[str] = (), array_parallelism: int = 64,
               throughput: Optional[str] = None, cluster: Cluster = Cluster(),
               rows: Optional[Sequence[str]] = None) -> TablePlan:
    """The cost of every run a table needs (of the rows labelled `rows`, where given); `resources_of(cfg)` gives a
    run's JobResources, `cluster` what the profile does not say about the links between GPUs (launch.plan.scaling)."""
    table = load_table(table_path)
    planned = planned_runs(table_path, None, seeds, tuple(overrides), rows)
    unique = unique_runs(planned)
    rates = Rates(profile, reference)
    sources: Dict[str, None] = {}
    extra_views: Dict[str, float] = {}
    costs: Dict[Path, RunCost] = {}
    for run in unique:
        cfg = run.cfg
        sizes, source = split_sizes(cfg)
        sources[source] = None
        total, per_epoch = train_steps(cfg, split_size(sizes, cfg.data.train_split, source))
        eval_size = split_size(sizes, cfg.data.eval_split, source)
        views = table_evaluation_views(table.kind, table.protocol, cfg)
        extra_views[cfg.model.name] = views
        resources = resources_of(cfg)
        gpus = resources.nodes * resources.ntasks_per_node
        share = gpu_share(cfg, gpus)
        rate = rates.for_run(cfg, gpus)
        step = run_step(cfg, gpus, resources.nodes, rate.train, cluster)
        costs[run.run_dir] = RunCost(
            row=run.row, label=run.label, model=cfg.model.name, seed=run.seed, gpus=gpus, train_steps=total,
            train_images=total * cfg.data.batch_size,
            train_eval_views=float(training_evaluations(cfg, total, per_epoch) * eval_size),
            protocol_views=views * eval_size, rate=rate, step=step, nodes=resources.nodes,
            steps_per_epoch=per_epoch, saves=checkpoint_saves(cfg.checkpoint, total, per_epoch, step.total_s),
            snapshot_s=snapshot_seconds(model_size(cfg.model), cluster),
            time_limit_s=60.0 * resources.time_minutes if resources.time_minutes else math.inf,
            max_requeues=resources.max_requeues, images_per_gpu=share.images, below_recipe=share.below_recipe())

    row_costs: List[RowCost] = []
    for index, row in enumerate(table.rows):
        if rows and row.label not in rows:
            continue  # not asked for: not shown
        mine = [r for r in planned if r.row == index]
        owned = [costs[r.run_dir] for r in mine if costs[r.run_dir].row == index]
        model = mine[0].cfg.model.name if mine else "-"
        same_as = None
        if mine and not owned:
            same_as = costs[mine[0].run_dir].label
        row_costs.append(RowCost(index, row.label, model, owned, same_as))

    # The report reads files and draws: no model to build or dataset to open, so the shortest start-up.
    report_s = min((cost.startup_s for cost in costs.values()), default=0.0)
    plan = TablePlan(str(table_path), table.title, row_costs, array_parallelism,
                     throughput or describe_profile(profile), report_s=report_s)
    plan.assumptions = _assumptions(table.kind, table.protocol, list(sources), extra_views, rates, plan, cluster)
    return plan


def describe_profile(profile: dict) -> str:
    if profile["kind"] == "reference":
        return (f"reference figures, not measured here: {profile.get('summary') or profile.get('source')} "
                f"[{_shown(profile['path'])}; {profile.get('url', '')}]")
    machine = profile.get("machine", {})
    where = (f"{machine.get('gpu_count')} x {machine.get('gpu')}" if machine.get("gpu")
             else f"CPU ({machine.get('cpu')}), per process")
    created = profile.get("created") or "date unknown"
    return f"measured by `launch bench` on {where}, {created} [{_shown(profile['path'])}]"


def _shown(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _assumptions(kind: str, protocol: str, sources: List[str], views: Dict[str, float], rates: Rates,
                 plan: TablePlan, cluster: Cluster) -> List[str]:
    lines = [f"split sizes: {'; '.join(sources)}; an epoch is floor(train split / global batch) steps",
             "evaluation: training's periodic evaluations and its final centre evaluation of the whole "
             "evaluation split, in centre views"]
    if kind == "table" and protocol == "tencrop":
        lines.append("the table's tencrop evaluation, after training on the same GPUs: 10 views per image")
    elif kind == "table" and protocol == "multiscale":
        distinct = set(views.values())
        shown = (f"{distinct.pop():.1f}" if len(distinct) == 1
                 else ", ".join(f"{model} {v:.1f}" for model, v in views.items()))
        lines.append("the table's multiscale evaluation, after training on the same GPUs: the whole image at each "
                     "of eval.scales, taken as 4:3 images costing in proportion to their pixels, i.e. centre "
                     f"views per image: {shown}; run one image at a time, it is likely slower than that")
    elif kind == "responses":
        lines.append("one more centre pass over the evaluation split for the layer responses")
    else:
        lines.append("the table reads training's own (centre) evaluations: no evaluation job after training")
    measured_eval = any(run.rate.eval_measured for run in plan.runs)
    lines.append(("evaluation images/s: " + ("measured (bench timed the final evaluation) where the profile has "
                                             "it, else " if measured_eval else ""))
                 + f"training's x{rates.eval_factor:g} ({rates.reference.get('eval_factor_source', '')})")
    lines += cluster.describe()
    lines.append(_startup_assumption(plan))
    lines.append("GPU-hours = GPUs x a run's wall time (steps, evaluations, checkpoint snapshots, start-ups); "
                 "evaluations take the GPUs' images/s times their number; on a CPU profile, read GPU as process")
    lines.append(f"wall time: each run (training, then its evaluation) placed longest first onto at most "
                 f"{plan.array_parallelism} concurrent jobs (--array-parallelism), then the report; queue waits "
                 "are not counted, nor the work redone after a requeue")
    if any("scaled by FLOPs" in note for run in plan.runs for note in run.rate.notes):
        lines.append(rates.reference.get("scaling_note", "scaled rows assume the same efficiency per FLOP"))
    lines.append("a run this table shares with another (Table 2's ResNet-34 is Table 3's ResNet-34 A) is counted in "
                 "each table's plan; a sweep trains it once")
    return lines


def _startup_assumption(plan: TablePlan) -> str:
    measured = sorted({run.startup_s for run in plan.runs if run.rate.startup_s is not None})
    if not measured:
        return ("start-up: not counted, the profile has none (`launch bench` measures it: process start, imports, "
                "dataset open, model build, the first slow steps, teardown)")
    shown = f"{measured[0]:.1f} s" if len(measured) == 1 else f"{measured[0]:.1f}-{measured[-1]:.1f} s"
    missing = any(run.rate.startup_s is None for run in plan.runs)
    return (f"start-up: {shown} a job (process start, imports, dataset open, model build, the first slow steps, "
            "teardown; measured by `launch bench`, which runs with W&B off), paid at every start of a training job "
            "(each requeue too) and of an evaluation job; the report: one more, the shortest"
            + ("; nets whose start-up the profile lacks: none counted" if missing else ""))

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
  the part of the communication that backward does not hide: the gradients in a ring, 2 (G-1)/G x their
  bytes all-reduced (ZeRO: (G-1)/G reduce-scattered, then the weights' (G-1)/G all-gathered after the step)
  over the slowest link crossed (NVLink on one node, the slower of it and the node's network on several;
  both options, an H100 node's by default) plus a latency per bucket; the last gradient bucket and ZeRO's
  all-gather always show;
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
communication and its exposed part, evaluation and checkpoint pauses per epoch, images/s, speed-up against
1 node and efficiency, then the table's GPU-hours and wall time per count. Where every run uses one GPU
(CIFAR), more nodes cannot speed a run up: each count is the cluster's size, running --node-gpus runs a node
at once, and the table's makespan per count is shown instead of a speed-up.

This module is the arithmetic; what the command prints, and the command itself, are `launch.plan.printing`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launch.plan.rates import Rate, Rates
from launch.plan.scaling import Cluster, StepTime, checkpoint_saves, model_size, run_step, snapshot_seconds
from launch.plan.workload import (
    makespan,
    split_size,
    split_sizes,
    table_evaluation_views,
    train_steps,
    training_evaluations,
)
from pipeline.config.per_gpu_batch import gpu_share
from pipeline.tables.spec import load_table, planned_runs, unique_runs


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
    step: StepTime  # compute and the communication of one step on `gpus` GPUs over `nodes` nodes
    nodes: int = 1
    steps_per_epoch: int = 1
    saves: float = 0.0  # checkpoints written by training
    snapshot_s: float = 0.0  # the blocking part of one save
    time_limit_s: float = math.inf
    max_requeues: int = 0
    images_per_gpu: float = 0.0  # of the global batch
    below_recipe: str | None = None  # the warning when a GPU gets fewer images than the recipe was made for

    @property
    def startup_s(self) -> float:
        return self.rate.startup_s or 0.0

    @property
    def epochs(self) -> float:
        return self.train_steps / self.steps_per_epoch

    @property
    def steps_s(self) -> float:
        """Training's steps, without its pauses: compute and the exposed communication."""
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
    runs: list[RunCost]
    same_as: str | None = None  # the row whose runs these are (a figure showing one run in two panels)


@dataclass
class TablePlan:
    table: str
    title: str
    rows: list[RowCost]
    array_parallelism: int
    throughput: str  # where the images/s come from, as printed
    report_s: float = 0.0  # the report after the last run: a start-up (reading files and drawing is quick)
    assumptions: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[RunCost]:
        return [run for row in self.rows for run in row.runs]

    @property
    def makespan_s(self) -> float:
        """The table's wall time: its runs on at most `array_parallelism` jobs at once, then the report."""
        return makespan([run.wall_s for run in self.runs], self.array_parallelism) + self.report_s

    @property
    def gpu_s(self) -> float:
        return sum(run.gpu_s_train + run.gpu_s_eval for run in self.runs)



def plan_table(table_path: str | Path, profile: dict, reference: dict, resources_of: Callable,
               seeds: list[int] | None = None, overrides: Sequence[str] = (), array_parallelism: int = 64,
               throughput: str | None = None, cluster: Cluster | None = None,
               rows: Sequence[str] | None = None) -> TablePlan:
    """The cost of every run a table needs (of the rows labelled `rows`, where given); `resources_of(cfg)` gives a
    run's resources (its `slurm` section with the flags applied), `cluster` what the profile does not say about the
    links between GPUs (launch.plan.scaling)."""
    cluster = cluster or Cluster()
    table = load_table(table_path)
    planned = planned_runs(table_path, None, seeds, tuple(overrides), rows)
    unique = unique_runs(planned)
    rates = Rates(profile, reference)
    sources: dict[str, None] = {}
    extra_views: dict[str, float] = {}
    costs: dict[Path, RunCost] = {}
    for run in unique:
        cfg = run.cfg
        sizes, source = split_sizes(cfg)
        sources[source] = None
        total, per_epoch = train_steps(cfg, split_size(sizes, cfg.data.train_split, source))
        eval_size = split_size(sizes, cfg.data.eval_split, source)
        views = table_evaluation_views(table.kind, table.protocol, cfg)
        extra_views[cfg.model.name] = views
        resources = resources_of(cfg)
        gpus = resources.gpus
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

    row_costs: list[RowCost] = []
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


def _assumptions(kind: str, protocol: str, sources: list[str], views: dict[str, float], rates: Rates,
                 plan: TablePlan, cluster: Cluster) -> list[str]:
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

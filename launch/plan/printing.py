"""What `python -m launch plan` prints: the table's costs (per row, the total, the assumptions) and, with
several --nodes, how a run scales or how the table packs onto the cluster. The arithmetic is `launch.plan.costs`'s."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence

from launch.plan.costs import TablePlan, plan_table
from launch.plan.profile import REFERENCE, load_profile
from launch.plan.requests import PlanRequest
from launch.plan.scaling import Cluster
from launch.plan.workload import makespan
from pipeline.config import ConfigError

WIDTH = 110  # of the printed notes and assumptions


def format_plan(plan: TablePlan) -> str:
    notes: dict[str, int] = {}

    def refs(texts: Sequence[str]) -> str:
        numbers = [notes.setdefault(text, len(notes) + 1) for text in dict.fromkeys(texts)]
        return "[" + ",".join(map(str, numbers)) + "]" if numbers else ""

    header = ["row", "model", "runs", "GPUs", "img/GPU", "train steps", "img/s/GPU", "GPU-h train", "GPU-h eval",
              "wall/run", "notes"]
    table: list[list[str]] = []
    for row in plan.rows:
        if not row.runs:
            table.append([row.label, row.model, "0", "-", "-", "-", "-", "-", "-", "-",
                          refs([f"{row.label}: the same run(s) as row {row.same_as}, counted there"])])
            continue
        texts = [n for run in row.runs for n in run.rate.notes]
        texts += [f"{row.label}: {run.below_recipe}" for run in row.runs if run.below_recipe]
        for run in row.runs:
            if run.requeues > run.max_requeues:
                texts.append(f"{row.label}: a training job of {_duration(run.training_job_s)} outlives its "
                             f"{_duration(run.time_limit_s)} limit {run.requeues} times, more than its "
                             f"{run.max_requeues} requeues (slurm.max_requeues; --time, --max-requeues)")
        walls = sorted({_duration(run.wall_s) for run in row.runs})
        table.append([row.label, row.model, str(len(row.runs)), _set(run.gpus for run in row.runs),
                      _set(f"{run.images_per_gpu:g}" for run in row.runs),
                      _set(f"{run.train_steps:,}" for run in row.runs), _set(_rate(run.rate.train) for run in row.runs),
                      _hours(sum(run.gpu_s_train for run in row.runs)),
                      _hours(sum(run.gpu_s_eval for run in row.runs)), " / ".join(walls), refs(texts)])
    runs = plan.runs
    total_train = sum(run.gpu_s_train for run in runs)
    total_eval = sum(run.gpu_s_eval for run in runs)
    table.append(["total", "", str(len(runs)), "", "", "", "", _hours(total_train), _hours(total_eval),
                  _duration(plan.makespan_s), f"makespan, <= {plan.array_parallelism} jobs at once"])
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8, 9}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header).rstrip())
    out = [f"{plan.title}  ({plan.table})", _wrapped("", f"throughput: {plan.throughput}").strip(), "",
           line(header).rstrip(), rule, *(line(cells).rstrip() for cells in table[:-1]), rule,
           line(table[-1]).rstrip(),
           f"GPU-hours: {_hours(total_train + total_eval)} ({_hours(total_train)} training, "
           f"{_hours(total_eval)} evaluation); wall time {_duration(plan.makespan_s)} with at most "
           f"{plan.array_parallelism} runs at once"]
    if notes:
        out += ["", "notes:", *(_wrapped(f"[{n}] ", text) for text, n in notes.items())]
    out += ["", "assumptions:", *(_wrapped("- ", text) for text in plan.assumptions)]
    return "\n".join(out)


def _wrapped(bullet: str, text: str, width: int = WIDTH) -> str:
    return textwrap.fill(text, width, initial_indent="  " + bullet, subsequent_indent=" " * (2 + len(bullet)),
                         break_long_words=False, break_on_hyphens=False)


def _set(values) -> str:
    return " / ".join(dict.fromkeys(str(v) for v in values))


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 0.01:
        return f"{hours:.2g}"  # a CIFAR net's evaluations: small, but not nothing
    if hours < 10:
        return f"{hours:.2f}"
    return f"{hours:,.1f}" if hours < 1000 else f"{hours:,.0f}"


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "no limit"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_scaling(plans: dict[int, TablePlan], counts: Sequence[int]) -> str:
    """Per row, a line per node count: what a step costs, the pauses, images/s and the speed-up against 1 node."""
    base = plans[1]
    header = ["row", "nodes", "GPUs", "img/GPU", "step", "compute", "comm", "exposed", "eval/epoch",
              "ckpt/epoch", "images/s", "speed-up", "efficiency", "wall/run"]
    table: list[list[str]] = []
    for index, row in enumerate(base.rows):
        if not row.runs:
            continue
        one = row.runs[0]  # a row's seeds cost the same
        for i, nodes in enumerate(counts):
            run = plans[nodes].rows[index].runs[0]
            speedup = run.train_images_per_s / one.train_images_per_s
            below = "*" if run.below_recipe else ""
            table.append([row.label if i == 0 else "", str(nodes), str(run.gpus), f"{run.images_per_gpu:g}{below}",
                          _short(run.step.total_s), _short(run.step.compute_s), _short(run.step.communication_s),
                          _short(run.step.exposed_s), _short(run.train_eval_s / run.epochs),
                          _short(run.checkpoint_s / run.epochs), _rate(run.train_images_per_s), f"{speedup:.2f}",
                          f"{speedup * one.gpus / run.gpus:.0%}", _duration(run.wall_s)])
    totals = [["nodes/run", "GPUs/run", "nodes in use", "GPU-hours", "wall time"]]
    for nodes in counts:
        plan = plans[nodes]
        at_once = min(plan.array_parallelism, len(plan.runs))
        totals.append([str(nodes), _set(run.gpus for run in plan.runs), str(at_once * nodes), _hours(plan.gpu_s),
                       _duration(plan.makespan_s)])
    first = plans[counts[0]]
    out = [_prose(f"Scaling over nodes per run: the table above is costed at {counts[0]} node(s) per run (the first "
                  "of --nodes). Per run: step = compute + exposed communication (comm: the gradients' reduction and "
                  "ZeRO's all-gather of the weights, hidden or not); eval/epoch and ckpt/epoch are the pauses of "
                  "an epoch; images/s over epochs with their pauses; speed-up and efficiency against 1 node."), "",
           *_aligned(header, table, left={0})]
    if any(run.below_recipe for plan in plans.values() for run in plan.runs):
        out += ["", _prose("* fewer images per GPU than the recipe was made for (data.recipe_batch_per_gpu): BN "
                           "statistics over fewer images, and the per-GPU images/s, taken at the profile's batch, is "
                           "optimistic for so small a batch. More nodes with the recipe's share need a larger global "
                           "batch: the large-batch preset (configs/imagenet/large_batch/), or more runs at once "
                           "instead.")]
    out += ["", _prose(f"the table per node count (at most {first.array_parallelism} runs at once, "
                       "--array-parallelism; GPU-hours of training and evaluation, wall time with the report):"),
            *_aligned(totals[0], totals[1:], left=set())]
    return "\n".join(out)


def format_packing(plan: TablePlan, counts: Sequence[int], cluster: Cluster, array_parallelism: int) -> str:
    """A table of one-GPU runs over more nodes: more runs at once, each no faster; its makespan per node count."""
    walls = [run.wall_s for run in plan.runs]
    busy_s = sum(walls)
    table = []
    for nodes in counts:
        slots = min(array_parallelism, nodes * cluster.node_gpus)
        span = makespan(walls, slots)
        table.append([str(nodes), str(nodes * cluster.node_gpus), str(min(slots, len(walls))),
                      _duration(span + plan.report_s), f"{busy_s / (nodes * cluster.node_gpus * span):.0%}"
                      if span else "-"])
    text = (f"Each run of this table uses one GPU: more nodes do not make a run faster, they run more runs at once. "
            f"Its {len(walls)} runs are one job array of one-GPU tasks, which SLURM places {cluster.node_gpus} to a "
            f"node (--node-gpus), at most {array_parallelism} at once (--array-parallelism); the table above is "
            f"costed at the first of --nodes, {counts[0]} node(s). The table's wall time (makespan, longest runs "
            "first) per node count:")
    header = ["nodes", "GPUs", "runs at once", "makespan", "GPUs busy"]
    return "\n".join([_prose(text), "", *_aligned(header, table, left=set()), "",
                      f"GPU-hours: {_hours(plan.gpu_s)} at any node count (each run is the same one-GPU job)"])


def _aligned(header: list[str], rows: list[list[str]], left: set) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    head = line(header).rstrip()
    return [head, "-" * len(head), *(line(cells).rstrip() for cells in rows)]


def _prose(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)


def _short(seconds: float) -> str:
    """A step's parts and an epoch's pauses: µs to minutes."""
    if seconds == 0:
        return "0"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    return _duration(seconds)


def plan(request: PlanRequest) -> int:
    """The `plan` command: print the table's cost, and with several --nodes how it scales."""
    reference = load_profile(REFERENCE)
    profile = load_profile(request.profile) if request.profile else reference
    cluster = request.cluster
    counts = list(dict.fromkeys(request.node_counts))
    if any(n < 1 for n in counts) or cluster.node_gpus < 1:
        raise ConfigError(f"--nodes and --node-gpus must be at least 1, got {request.node_counts or None} and "
                          f"{cluster.node_gpus}")

    def at(nodes: int | None, slots: int) -> TablePlan:
        """The table with `nodes` nodes per run (None: the configs' own slurm.nodes) and `slots` jobs at once."""
        flags = request.resources if nodes is None else \
            dataclasses.replace(request.resources, given={**request.resources.given, "nodes": nodes})
        # The flags mean what they mean for `sweep` and `reproduce`.
        return plan_table(request.table, profile, reference, lambda cfg: flags.applied_to(cfg.slurm),
                          seeds=request.seeds, overrides=request.overrides, array_parallelism=slots, cluster=cluster,
                          rows=request.rows)

    if not counts:
        print(format_plan(at(None, request.array_parallelism)))
        return 0
    own = at(None, request.array_parallelism)
    if own.runs and all(run.gpus == 1 for run in own.runs):
        # One GPU a run: --nodes is the cluster's size, which decides how many runs go at once, not a run's speed.
        first = at(None, min(request.array_parallelism, counts[0] * cluster.node_gpus))
        print(format_plan(first) + "\n\n" + format_packing(own, counts, cluster, request.array_parallelism))
        return 0
    plans = {nodes: at(nodes, request.array_parallelism) for nodes in dict.fromkeys([*counts, 1])}
    print(format_plan(plans[counts[0]]) + "\n\n" + format_scaling(plans, counts))
    return 0

"""What `bench` and `plan` were asked, as `launch.cli` parses their command lines. Light on purpose: the command line
is parsed before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from launch.plan.scaling import Cluster
from launch.submit.resources import ResourceFlags


@dataclass(frozen=True)
class BenchRequest:
    """What `launch bench` was asked: the nets to measure, how long, where, and the profile to write."""

    models: list[str]  # model names or training configs
    overrides: list[str] = field(default_factory=list)  # for every model, e.g. data.root=/data/imagenet
    steps: int = 50  # timed training steps per model
    warmup_steps: int = 10  # untimed steps first (compilation, cudnn autotune)
    nproc: int = 1  # processes (GPUs) on this machine, without slurm
    slurm: bool = False  # measure in a SLURM job with the given resources
    out: str = "throughput.json"
    resources: ResourceFlags = ResourceFlags()


@dataclass(frozen=True)
class PlanRequest:
    """What `launch plan` was asked: the table (its runs as `reproduce` would submit them), the throughput
    profile, the node counts to compare and what the profile cannot say about the cluster."""

    table: str
    overrides: list[str] = field(default_factory=list)
    profile: str | None = None  # a profile from `launch bench` (None: the reference figures)
    seeds: list[int] | None = None
    rows: list[str] | None = None
    array_parallelism: int = 64
    node_counts: list[int] = field(default_factory=list)  # --nodes N [N ...]: nodes per run, compared
    cluster: Cluster = field(default_factory=Cluster)  # its defaults: the reference node's, read when asked
    resources: ResourceFlags = ResourceFlags()  # the other resource flags (--gpus-per-node, --time, ...)

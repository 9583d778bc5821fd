"""What `submit`, `local`, `sweep`, `prep` and `evaluate` were asked, as `launch.cli` parses their command lines and
`launch.submit.commands` takes them. Light on purpose: the command line is parsed before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from launch.submit.resources import ResourceFlags


@dataclass(frozen=True)
class SubmitRequest:
    config: str
    overrides: list[str] = field(default_factory=list)
    dry_run: bool = False  # print the sbatch script and the resolved config only
    no_data_check: bool = False
    resources: ResourceFlags = ResourceFlags()


@dataclass(frozen=True)
class LocalRequest:
    config: str
    overrides: list[str] = field(default_factory=list)
    nproc: int = 1


@dataclass(frozen=True)
class SweepRequest:
    table: str
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    rows: list[str] | None = None
    runs: str | None = None  # the directory for the runs (default: each config's run.out_dir)
    array_parallelism: int = 64
    dry_run: bool = False
    no_data_check: bool = False
    resources: ResourceFlags = ResourceFlags()


@dataclass(frozen=True)
class PrepRequest:
    num_tasks: int
    prep_args: list[str]  # data_prep's own arguments
    array_parallelism: int = 64
    wait: bool = False
    resources: ResourceFlags = ResourceFlags()


@dataclass(frozen=True)
class EvaluateRequest:
    run_dir: str
    overrides: list[str] = field(default_factory=list)  # data.* and eval.* settings for this evaluation
    protocol: str = "center"
    checkpoint: str = "last"
    layer_responses: bool = False
    nproc: int = 1  # processes here (without slurm)
    slurm: bool = False
    wait: bool = False  # with slurm: wait for the result and print it
    resources: ResourceFlags = ResourceFlags()

"""What `reproduce` and `status` were asked, as `launch.cli` parses their command lines. Light on purpose: the command
line is parsed before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from launch.submit.resources import ResourceFlags
from pipeline.tables.request import TableRequest


@dataclass(frozen=True)
class ReproduceRequest:
    """What one `launch reproduce` call asks: the table, where its runs go, what changes in them, how its jobs run."""

    table: str
    runs: str
    overrides: list[str] = field(default_factory=list)  # section.key=value, for every run
    seeds: list[int] | None = None  # None: each row's, else the table's
    rows: list[str] | None = None  # row labels; None: every row
    array_parallelism: int | None = None  # training tasks at once (None: ARRAY_PARALLELISM, not recorded)
    dry_run: bool = False
    no_data_check: bool = False
    local: bool = False  # the same chain here, run after run, instead of on SLURM
    nproc: int = 1  # with local: processes (ranks) per run
    resources: ResourceFlags = ResourceFlags()

    def table_request(self) -> TableRequest:
        """What is kept beside the runs: the table, its overrides, seeds and rows, and how its jobs run (as flags,
        which a later call with the table and --runs alone repeats)."""
        flags = self.resources.command_line()
        if self.array_parallelism is not None:
            flags += ["--array-parallelism", str(self.array_parallelism)]
        if self.local:
            flags += ["--local", "--nproc", str(self.nproc)]
        if self.no_data_check:
            flags.append("--no-data-check")
        return TableRequest(str(Path(self.table).resolve()), list(self.overrides), self.seeds, self.rows, flags)


@dataclass(frozen=True)
class StatusRequest:
    paths: list[str] = field(default_factory=lambda: ["runs"])  # run directories, folders, table configs
    runs: str | None = None  # with a table config: the directory holding its runs

"""Where a run's files lie, and a table's runs folder's: each name is written here and nowhere else.

    run = RunDir.of(cfg)            # <run.out_dir>/<run.name>
    run.config, run.checkpoints, run.metrics, run.results, run.lock, run.wandb, run.slurm_logs, ...
    runs = RunsFolder(runs_dir)     # the folder `launch reproduce --runs` fills for a table
    runs.request(table), runs.sweeps(table), runs.report(table), ...

A run directory holds what training, evaluation and `launch` write for one run (docs/design.md lists the
contract); a runs folder holds run directories side by side, and for each table reproduced there what was
asked, its job arrays' files and its report. Light on purpose (no torch): `launch` finds runs through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: the config package is not needed to name files
    from pipeline.config.schema import ExperimentConfig

PathLike = str | Path


@dataclass(frozen=True)
class RunDir:
    """One run's directory, `<run.out_dir>/<run.name>`, and the path of each file in it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is taken too

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> RunDir:
        """The run directory a resolved config trains into."""
        return cls(Path(cfg.run.out_dir) / cfg.run.name)

    @property
    def config(self) -> Path:
        """The resolved config the run trains with (written by training, or by `launch` before submitting)."""
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        """Every record the run logged, one JSON object a line (W&B's local mirror)."""
        return self.path / "metrics.jsonl"

    @property
    def results(self) -> Path:
        """Training's final evaluation and one entry per evaluation protocol."""
        return self.path / "results.json"

    @property
    def layer_responses(self) -> Path:
        """Fig. 7's per-layer response std."""
        return self.path / "layer_responses.json"

    @property
    def lock(self) -> Path:
        """Held by the primary rank of the one training that owns the directory."""
        return self.path / "run.lock"

    @property
    def wandb(self) -> Path:
        """W&B's own files (offline runs to sync)."""
        return self.path / "wandb"

    @property
    def wandb_id(self) -> Path:
        """The W&B run id every start of the run continues."""
        return self.path / "wandb_id"

    @property
    def wandb_last_step(self) -> Path:
        """The last step W&B is known to hold (written when a start closes W&B cleanly)."""
        return self.path / "wandb_last_step"

    @property
    def ranks(self) -> Path:
        """One file per rank of the latest start: where it ran."""
        return self.path / "ranks"

    def rank_placement(self, rank: int) -> Path:
        return self.ranks / f"rank-{rank:05d}.json"

    @property
    def exports(self) -> Path:
        """`python -m pipeline.export`'s folders, one per checkpoint exported (W&B's model artifact is one)."""
        return self.path / "export"

    def export(self, step: int) -> Path:
        """The export folder of the checkpoint of `step` (pipeline/export/files.py names what lies in it)."""
        return self.exports / f"step-{step:09d}"

    @property
    def slurm_job_id(self) -> Path:
        """The SLURM job id of the run's training, for `launch status`."""
        return self.path / "slurm_job_id"

    def evaluation_job_id(self, evaluation: str) -> Path:
        """The SLURM job id of the run's evaluation job named `evaluation` (a protocol, or `responses`)."""
        return self.path / f"slurm_eval_{evaluation}_job_id"

    @property
    def slurm_logs(self) -> Path:
        """submitit's job files and logs of the jobs `launch submit` and `launch evaluate --slurm` start."""
        return self.path / "slurm"

    def exists(self) -> bool:
        """Whether anything of the run was written: its config or its records."""
        return self.config.exists() or self.metrics.exists()


@dataclass(frozen=True)
class RunsFolder:
    """A folder of run directories, and what `launch` keeps there for each table reproduced into it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is taken too

    def request(self, table: PathLike) -> Path:
        """What `launch reproduce` was asked for `table` (its overrides, seeds, rows, job flags)."""
        return self.path / f"{Path(table).stem}.reproduce.json"

    @property
    def all_sweeps(self) -> Path:
        return self.path / "_sweeps"

    def sweeps(self, table: PathLike) -> Path:
        """submitit's files and logs of `table`'s training job arrays (`launch sweep`, `reproduce`)."""
        return self.all_sweeps / Path(table).stem

    @property
    def reports(self) -> Path:
        return self.path / "reports"

    def report(self, table: PathLike) -> Path:
        """The Markdown report of `table` (its figure lies beside it)."""
        return self.reports / f"{Path(table).stem}.md"

    def report_job_id(self, table: PathLike) -> Path:
        """The SLURM job id of `table`'s report job."""
        return self.reports / f"{Path(table).stem}.slurm_job_id"

    @property
    def report_jobs(self) -> Path:
        """submitit's files and logs of the report jobs."""
        return self.reports / "_slurm"

    @property
    def submission_lock(self) -> Path:
        """Held while a `launch` command decides what to submit into this folder and submits it."""
        return self.path / ".launch-submit.lock"

"""The report job at the end of a table's chain: the report of the table over its runs, with SLURM's word on each
run, and the table as a W&B table. Its callable is pickled by submitit (`launch.reproduce` keeps the path of earlier
versions).
"""

from __future__ import annotations

from pathlib import Path

from launch.submit.run_status import run_statuses
from pipeline.config import SlurmConfig
from pipeline.report.write import write_report
from pipeline.run.layout import RunsFolder


class ReportJob:
    """The callable of the report job: `pipeline.report` of the table over its runs, and its W&B table."""

    def __init__(self, table_path: Path, runs_dir: Path) -> None:
        self.table_path, self.runs_dir = Path(table_path), Path(runs_dir)

    def __call__(self) -> list[str]:
        return [str(p) for p in write_table_report(self.table_path, self.runs_dir)]


def write_table_report(table_path: Path, runs_dir: Path) -> list[Path]:
    """The report, with SLURM's word on each run (a run whose job failed shows as failed) and its W&B table."""
    return write_report(table_path, runs_dir, RunsFolder(runs_dir).reports, states_of=run_statuses, wandb=True)


def report_resources(resources: SlurmConfig) -> SlurmConfig:
    """A report reads files and draws a figure: one CPU task, wherever the training jobs may run."""
    return SlurmConfig(nodes=1, gpus_per_node=0, tasks_per_node=1, cpus_per_task=1, time_minutes=30,
                       partition=resources.partition, account=resources.account, qos=resources.qos,
                       max_requeues=resources.max_requeues, additional=dict(resources.additional))

"""The report's table as a W&B table, in the W&B group of the table's runs.

The report is a W&B run of its own (job type `report`, named `<table>-report`) in the project and mode
of the table's runs, grouped with them, so the W&B UI shows the paper's numbers beside the runs that
filled them. Its id is kept beside the report (`<table>.wandb_id`): each new report logs the table
again to the same W&B run, at the next step, rather than adding a run per report.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

from pipeline.config.schema import LoggingConfig
from pipeline.run.wandb_run import start_wandb


def log_report_table(name: str, title: str, header: list[str], rows: list[list[str]], logging: LoggingConfig,
                     out_dir: Path) -> str | None:
    """Log `rows` under `header` as the W&B table `name`; returns the W&B run id (None with W&B disabled)."""
    if logging.wandb_mode == "disabled":
        return None
    import wandb  # W&B: only when it is on


    id_file = out_dir / f"{name}.wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id)
    settings = replace(logging, wandb_group=name, wandb_name=f"{name}-report", wandb_tags=[name, "report"])
    run = start_wandb(out_dir, settings, f"{name}-report", {"table": title}, run_id, job_type="report")
    try:
        run.log({name: wandb.Table(columns=header, data=rows)})
    finally:
        run.finish()
        wandb.teardown()  # the offline files are whole once this returns (see pipeline.run.logger.RunLogger.close)
    return run_id

"""`python -m launch status [RUN_DIR | FOLDER | TABLE.yaml ...] [--runs DIR]`: where runs stand.

A run's state is what its run directory's files say (`pipeline.run.state`) plus what only SLURM knows:
a run with a recorded job id is queued, running, requeued (waiting again, with a checkpoint to resume
from), as `squeue` tells, or, once its job has left the queue without finishing it, cancelled, timeout,
preempted, stopped or failed, as SLURM's accounting, its controller or the job's log tell
(`launch.submit.run_status`), with the step it resumes from. Each run shows its state, step of total steps
and percent (a run that is not running: the steps it has saved), training wall time, ETA (while running: the
last record's estimate less the time since it was written), SLURM job id and last training metrics (a run
that has not logged yet: the step of its first record). A table config (`configs/tables/*.yaml`)
shows its planned runs (a run directory that does not exist yet is not started) and a last line with the
table's progress: runs finished, runs evaluated with the table's protocol, percent of all steps, and the
longest ETA among the running runs. A waiting job shows SLURM's reason (`queued (BeginTime)`), a failed
one its last error line and the path of its log.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from launch.reproduce.request import StatusRequest
from launch.submit.partition import NEVER_STARTS
from launch.submit.run_status import ENDED_UNFINISHED, RunStatus, run_statuses
from pipeline.run.layout import RunDir
from pipeline.run.logger import format_duration
from pipeline.run.results import protocol_result, read_results
from pipeline.tables.request import load_request
from pipeline.tables.spec import load_table, planned_runs, unique_runs

_SHOWN_METRICS = ("loss", "train_top1_error", "lr", "images_per_s")
NEVER_SAID = ": can never start as asked; scancel it and submit with less"


def status(request: StatusRequest) -> int:
    """`launch status`."""
    return print_status(request.paths, request.runs)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding a config.yaml) at or under the given paths."""
    found: list[Path] = []
    for path in map(Path, paths):
        if RunDir(path).config.exists():
            found.append(path)
        elif path.is_dir():
            name, checkpoints = RunDir(path).config.name, RunDir(path).checkpoints.name
            found += sorted(p.parent for p in path.rglob(name) if checkpoints not in p.parts)
    return found


def print_status(paths: list[str], runs: str | Path | None = None) -> int:
    """Print each path's runs (a table config: its planned runs and its overall progress); 1 if none found.

    A table config that does not load raises `pipeline.config.ConfigError`, naming the file and the key."""
    tables = [p for p in paths if str(p).endswith((".yaml", ".yml"))]
    found = find_runs([p for p in paths if p not in tables])
    if not found and not tables:
        print(f"no runs found under {', '.join(map(str, paths))}")
        return 1
    if found:
        _print_runs(run_statuses(found))
    for i, table_path in enumerate(tables):
        if found or i:
            print()
        _print_table(Path(table_path), runs)
    return 0


def _print_table(table_path: Path, runs_dir: str | Path | None) -> None:
    table = load_table(table_path)
    request = load_request(Path(runs_dir) if runs_dir else None, table_path)
    planned = unique_runs(request.planned(Path(runs_dir)) if request else planned_runs(table_path, runs_dir))
    statuses = run_statuses([run.run_dir for run in planned])
    print(f"{table_path}: {table.title}")
    if request:
        print(f"as asked: {request.command(Path(runs_dir))}")
    _print_runs(statuses, [f"{run.label}, seed {run.seed}" for run in planned])

    totals = [s.total_steps or _planned_total(run.cfg) for s, run in zip(statuses, planned)]
    known = [t for t in totals if t]
    # A run that has not started has no recorded total: it counts as long as the others (a table's runs
    # mostly share their schedule), and where nothing is known, the percent is not shown.
    guess = sum(known) / len(known) if known else None
    steps = sum(min(s.step, t or s.step) for s, t in zip(statuses, totals))
    overall = steps / sum(t or guess for t in totals) if guess else None
    finished = sum(s.state == "finished" for s in statuses)
    evaluated = sum(protocol_result(read_results(s.run_dir), table.protocol) is not None for s in statuses)
    etas = [s.eta_s for s in statuses if s.state == "running" and s.eta_s is not None]
    print(f"{table_path.name}: {finished}/{len(statuses)} runs finished, {evaluated}/{len(statuses)} evaluated "
          f"({table.protocol}), " + (f"{overall:.0%} of all steps" if overall is not None else "steps unknown")
          + (f", longest ETA {format_duration(max(etas))}" if etas else ""))


def _planned_total(cfg) -> int | None:
    """Total steps a run's config fixes without its dataset: only a schedule counted in iterations."""
    return cfg.schedule.total if cfg.schedule.unit == "iteration" else None


def _resumes(status: RunStatus) -> str:
    """Where a run that ended without finishing goes on from when it is submitted again."""
    if status.checkpoint_step is None:
        return "nothing saved: started again, it starts from step 0"
    return f"started again, it resumes from step {status.checkpoint_step} (its last checkpoint)"


def _first_record_step(run_dir: Path) -> str:
    """The step of a run's first training record (`logging.every_steps`, as its config says)."""
    try:
        every = (yaml.safe_load(RunDir(run_dir).config.read_text()) or {})["logging"]["every_steps"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "logging.every_steps"
    return str(every)


def _print_runs(statuses: list[RunStatus], labels: list[str] | None = None) -> None:
    rows = [["run", "state", "step", "%", "elapsed", "eta", "job", "last metrics"]]
    for i, s in enumerate(statuses):
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in s.last_metrics.items()
                 if k in _SHOWN_METRICS}
        if s.state == "running" and not shown:
            shown = {"starting": f"first training record at step {_first_record_step(s.run_dir)}"}
        rows.append([
            str(s.run_dir) + (f" ({labels[i]})" if labels else ""),
            s.state + (f" ({s.reason}{NEVER_SAID if s.reason in NEVER_STARTS else ''})" if s.reason else ""),
            f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step),
            f"{s.progress:.0%}" if s.progress is not None else "-",
            format_duration(s.elapsed_s),
            format_duration(s.eta_s) if s.state == "running" else "-",
            s.job_id or "-",
            " ".join(f"{k}={v}" for k, v in shown.items()) or "-",
        ])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    for row, status in zip(rows, [None, *statuses]):
        cells = [cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells) + "  " + row[-1])
        if status is not None and status.state == "failed":
            print(f"    {status.error or 'no error line'}" + (f" (log: {status.log})" if status.log else
                                                              " (no log found)"))
        if status is not None and status.state in ENDED_UNFINISHED:
            print(f"    {_resumes(status)}")

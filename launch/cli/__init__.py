"""`python -m launch <command>`: the command line parsed into its command's typed request (`parsers`, with the
flags several commands share in `flags`), then handed to the command's work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from launch.cli.parsers import parse
from launch.plan.requests import BenchRequest, PlanRequest
from launch.reproduce.request import ReproduceRequest, StatusRequest
from launch.submit.queue import QueueUnanswered
from launch.submit.requests import EvaluateRequest, LocalRequest, PrepRequest, SubmitRequest, SweepRequest
from pipeline.config import ConfigError
from pipeline.tables.request import TableRequest, load_request


def main(argv: list[str] | None = None) -> int:
    request = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(request)
    except (ConfigError, QueueUnanswered) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(request: Any) -> int:
    """Do what `request` asks; its exit code. A command's module is imported only when it is asked for: most load
    torch, which `--help` and a command line that fails to parse should not wait for."""
    if isinstance(request, ReproduceRequest):
        from launch.reproduce.command import reproduce  # noqa: PLC0415 - loads torch: only the command asked for

        return reproduce(as_asked_before(request))
    if isinstance(request, StatusRequest):
        from launch.reproduce.status import status  # noqa: PLC0415 - loads torch: only the command asked for

        return status(request)
    if isinstance(request, BenchRequest):
        from launch.plan.bench import bench  # noqa: PLC0415 - loads torch: only the command asked for

        return bench(request)
    if isinstance(request, PlanRequest):
        from launch.plan.printing import plan  # noqa: PLC0415 - loads torch: only the command asked for

        return plan(request)
    from launch.submit import commands  # noqa: PLC0415 - loads torch: only the command asked for

    work = {SubmitRequest: commands.submit_training, LocalRequest: commands.train_here, SweepRequest: commands.sweep,
            PrepRequest: commands.prep, EvaluateRequest: commands.evaluate}
    return work[type(request)](request)


def as_asked_before(request: ReproduceRequest) -> ReproduceRequest:
    """`reproduce TABLE --runs DIR` alone (or with --dry-run) asks again what DIR's recorded request for the table
    asked (`pipeline.tables.request`): its overrides, seeds, rows and job flags."""
    table, runs_dir = Path(request.table).resolve(), Path(request.runs).resolve()
    saved = load_request(runs_dir, table)
    if saved is None or request.table_request() != TableRequest(str(table)):
        return request
    print(f"as asked before: {saved.command(runs_dir)}")
    return parse(["reproduce", *saved.arguments(runs_dir), *(["--dry-run"] if request.dry_run else [])])

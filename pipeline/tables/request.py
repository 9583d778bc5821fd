"""What `launch reproduce` was asked for a table (its overrides, seeds, rows and job flags), kept beside the runs
in `<runs>/<table>.reproduce.json`, so that `launch status`, the report and the next `reproduce` count and
repeat exactly that request rather than the table's defaults (five seeds of 64k iterations where a user asked
for one seed of 400).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.run.layout import RunsFolder
from pipeline.tables.spec import PlannedRun, planned_runs

FORMAT = "resnet-repro-request"


@dataclass
class TableRequest:
    table: str  # the table config's absolute path
    overrides: list[str] = field(default_factory=list)  # section.key=value, for every run
    seeds: list[int] | None = None  # None: each row's, else the table's
    rows: list[str] | None = None  # row labels; None: every row
    flags: list[str] = field(default_factory=list)  # how the jobs run: resources, --local --nproc N, ...

    def planned(self, runs_dir: Path) -> list[PlannedRun]:
        """The runs asked for, as `planned_runs` resolves them."""
        return planned_runs(self.table, runs_dir, self.seeds, tuple(self.overrides), self.rows)

    def arguments(self, runs_dir: Path) -> list[str]:
        """`launch reproduce`'s arguments that ask the same again."""
        return [self.table, *self.overrides, "--runs", str(runs_dir),
                *(["--seeds", *map(str, self.seeds)] if self.seeds else []),
                *(["--rows", *self.rows] if self.rows else []), *self.flags]

    def command(self, runs_dir: Path) -> str:
        return shlex.join(["python", "-m", "launch", "reproduce", *self.arguments(runs_dir)])


def save_request(runs_dir: Path, request: TableRequest) -> Path:
    path = RunsFolder(runs_dir).request(request.table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": 1, **asdict(request)}, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_request(runs_dir: Path | None, table: str | Path) -> TableRequest | None:
    """The request recorded for `table` in `runs_dir`, or None (no runs directory, or never reproduced there)."""
    if runs_dir is None:
        return None
    path = RunsFolder(runs_dir).request(table)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT or raw.get("version") != 1:
            raise ValueError(f"not a request of format {FORMAT!r}, version 1")
        return TableRequest(raw["table"], list(raw["overrides"]), raw["seeds"], raw["rows"], list(raw["flags"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: {e}; remove it and run `launch reproduce` with the request again") from e

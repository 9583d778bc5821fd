"""`python -m pipeline.report configs/tables/<t>.yaml [...] [--runs DIR] [--out DIR]`: the paper beside us.

For each table config (`pipeline.tables`) the report reads the planned runs' directories and writes
`<out>/<table>.md`: the paper's value, ours, the difference, each row's state (missing, submitted to SLURM,
running with its progress, stopped, or trained but not yet evaluated with the table's protocol, with the
command that does it) and each row's departures from the paper's recipe. Curve tables (Figs. 4 and 6) and the
layer-response table (Fig. 7) also get `<out>/<table>.png`.

Values are in the paper's form: one run's value, or for several runs "best (mean ± std)", the best run
being the one with the lowest error on the table's first metric (the paper's "6.43 (6.61±0.16)" for
ResNet-110, best of 5). The difference compares means where both sides have several runs.

Departures are computed from each run's own resolved config (`<run>/config.yaml`; the planned config
while the run has none) against the row's paper recipe: a run submitted with `launch sweep ... --
data.batch_size=8192` lists `data.batch_size: 256 → 8192` and the `peak lr` it implies.

Everything is read from the run directories' own files: results.json, metrics.jsonl, layer_responses.json,
config.yaml, and a run's state from them too (`pipeline.run.state`): the report never asks SLURM, so a
submitted run is "submitted" whether its job waits, runs or failed (`python -m launch status` asks the
queue). A caller that knows more passes its own `states_of` (e.g. `launch.reproduce.status.run_statuses`, which asks
the queue once for all the runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.report.reading import ReportError
from pipeline.report.write import write_report


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help="table configs, e.g. configs/tables/table6.yaml")
    parser.add_argument("--runs", type=Path,
                        help="the directory holding the runs (default: each config's run.out_dir)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where to write (default: reports)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log each table as a W&B table, grouped with its runs (their W&B project and mode)")
    args = parser.parse_args(argv)
    for table in args.tables:
        try:
            written = write_report(Path(table), args.runs, args.out, wandb=args.wandb)
        except (ConfigError, ReportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(written[0].read_text())
        print("written: " + ", ".join(map(str, written)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

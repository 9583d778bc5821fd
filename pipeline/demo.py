"""`make demo`: the whole path on a small real dataset, on this machine's CPU.

Each stage that exists runs for real; later stages join as they are built:
  1. the model zoo: every network of the paper with its size and cost (Tables 1 and 6).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _run(*args: str) -> None:
    """Run a project command in a child process, as a user would, and stop on failure."""
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="directory for the demo's data and runs (default: demo)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    _step("1. The paper's networks (Table 1 mult-adds at 224 px, Table 6 parameters)")
    _run("-m", "pipeline.models")

    print(f"\ndemo finished; its files are under {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

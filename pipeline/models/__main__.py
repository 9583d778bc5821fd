"""`python -m pipeline.models [--json]`: every registered model with its depth, parameters and mult-adds."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.models.complexity import model_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.models",
        description="List every registered model: name, depth, parameters and multiply-adds at its native "
        "resolution (224x224 for ImageNet nets, 32x32 for CIFAR nets), counted from the real module.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of {name, depth, params, macs}")
    args = parser.parse_args(argv)


    rows = model_table()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'name':<16} {'depth':>5} {'params':>10} {'mult-adds':>10}")
    for row in rows:
        print(f"{row['name']:<16} {row['depth']:>5} {row['params'] / 1e6:>9.2f}M {row['macs'] / 1e9:>9.3f}G")
    return 0


if __name__ == "__main__":
    sys.exit(main())

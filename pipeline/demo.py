"""`make demo`: the whole path on a small real dataset, on this machine's CPU, in a few minutes.

  1. scikit-learn's 1,797 real handwritten digits, written in CIFAR-10's python-batch format;
  2. `data_prep` shards them into WebDataset tars with DALI index files and verifies them;
  3. `launch local` trains a CIFAR ResNet in 2 processes (DDP over gloo) through the DALI loader,
     with checkpoints and an offline W&B run, and evaluates it on the test split.

Run it again and it resumes (or, finished, just re-evaluates): nothing is redone that is complete.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "digits.yaml"


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
    parser.add_argument("--nproc", type=int, default=2, help="training processes (default: 2)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    raw, shards, runs = out / "raw", out / "digits", out / "runs"

    _step("1. The digits in CIFAR-10's format (real photos of handwriting from scikit-learn)")
    _run("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(raw))

    _step("2. Sharding into WebDataset tars, then verifying every shard")
    _run("-m", "data_prep", "cifar10", "--src", str(raw / "cifar-10-batches-py"), "--out", str(shards),
         "--samples-per-shard", "400")
    _run("-m", "data_prep", "verify", str(shards))

    _step(f"3. Training a CIFAR ResNet with DDP in {args.nproc} processes on the CPU (DALI loader)")
    _run("-m", "launch", "local", str(DEMO_CONFIG), f"data.root={shards}", f"run.out_dir={runs}",
         "--nproc", str(args.nproc))

    from pipeline.config import load_config

    run_dir = runs / load_config(DEMO_CONFIG).run.name
    result = json.loads((run_dir / "results.json").read_text())["train"]
    print(f"\ntest error: {result['top1_error']:.2f}% (top-5 {result['top5_error']:.2f}%, "
          f"{result['samples']} test images, {result['step']} steps)")
    print(f"run directory:  {run_dir}")
    print(f"checkpoints:    {run_dir / 'checkpoints'}")
    print(f"metrics:        {run_dir / 'metrics.jsonl'}")
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    if wandb_runs:
        print(f"offline W&B run: {wandb_runs[-1]}  (upload with `wandb sync {wandb_runs[-1]}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of agreeing on a stop every step: CPU step time with the check every step and every 10 steps.

    python benchmarks/step_sync.py [--model cifar_resnet8] [--steps 200] [--batch 16] [--rounds 2]

Before, the training loop asked every rank each step whether one had a stop signal or a save due: a
collective plus a device-to-host copy per step (on a GPU it stops the CPU from queueing work ahead of
the GPU). Now it asks every `checkpoint.check_every_steps` steps. This runs `pipeline.train` in 2
processes (DDP over gloo) on synthetic data with a small model and batch, where per-step overhead shows,
with `checkpoint.check_every_steps=1` (the old loop) and `=10` (the default), alternating, and records the
step times side by side in benchmarks/results/step_sync.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from train_throughput import REPO, machine, measure, sh, write_report  # benchmarks/ is this script's directory

VARIANTS = {"every step (before)": 1, "every 10 steps (now)": 10}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet8")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--rounds", type=int, default=2, help="each variant this many times, alternating")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "step_sync.md")
    args = parser.parse_args()

    step_ms: dict = {label: [] for label in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sh("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(tmp / "raw"))
        sh("-m", "data_prep", "cifar10", "--src", str(tmp / "raw" / "cifar-10-batches-py"), "--out",
           str(tmp / "shards"), "--no-progress")
        for round_ in range(args.rounds):
            for i, (label, every) in enumerate(VARIANTS.items()):
                result = measure("synthetic", tmp / "shards", tmp / "runs", args.model, args.steps, args.nproc,
                                 args.batch, extra=[f"checkpoint.check_every_steps={every}"], name=f"r{round_}-{i}")
                step_ms[label].append(1000 * args.batch / result["images_per_s"])
                print(f"{label}: {step_ms[label][-1]:.2f} ms/step", flush=True)

    before, now = (min(v) for v in step_ms.values())
    lines = [
        "# Agreeing on a stop: every step or every 10 steps",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/step_sync.py --model {args.model} --steps {args.steps} --nproc {args.nproc} "
        f"--batch {args.batch} --rounds {args.rounds}` (DDP over gloo, synthetic data, the variants alternating; "
        "the first logging window, with start-up, left out).",
        "",
        "| stop/save check | ms per step, each round | best |",
        "|---|---|---|",
        *(f"| {label} | {', '.join(f'{v:.2f}' for v in values)} | {min(values):.2f} |"
          for label, values in step_ms.items()),
        "",
        f"every 10 steps / every step, best of each: {now / before:.3f} of the step time "
        f"({before - now:.2f} ms less per step).",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

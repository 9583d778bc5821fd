"""Training throughput: images/s with synthetic data beside the same training on real shards.

    python benchmarks/train_throughput.py [--model cifar_resnet20] [--steps 60] [--nproc 2] [--out DIR]

Runs `pipeline.train` for real (N processes, DDP; gloo on CPU, nccl on GPU) twice on the same model and
batch: once with `data.backend=synthetic` (no input pipeline: the compute ceiling) and once reading the
digits shards through DALI. The ratio of the two is the data-stall ratio: 1.0 means the input pipeline
never makes the GPU/CPU wait. Also reports the fraction of step time spent waiting for data. Builds its
own dataset (`data_prep synth` + `data_prep cifar10`); the results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo" / "digits.yaml"


def sh(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def measure(backend: str, shards: Path, out: Path, model: str, steps: int, nproc: int, batch: int,
            extra: Sequence[str] = (), name: str | None = None) -> dict:
    """Mean images/s and data-wait fraction of a `pipeline.train` run (`extra`: more overrides)."""
    from pipeline.run.layout import RunDir  # this commit's own layout (benchmarks run against older commits too)

    name = name or backend
    overrides = [f"data.root={shards}", f"data.backend={backend}", f"run.out_dir={out}", f"run.name={name}",
                 f"model.name={model}", "schedule.unit=iteration", f"schedule.total={steps}", "schedule.milestones=[]",
                 f"data.batch_size={batch}", "logging.every_steps=10", "eval.every_epochs=0",
                 "checkpoint.every_minutes=0", "checkpoint.at_epoch_end=false", "logging.wandb_mode=disabled", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    sh("-m", "launch", "local", str(CONFIG), *overrides, "--nproc", str(nproc), env=env)
    records = [json.loads(line) for line in RunDir(out / name).metrics.read_text().splitlines()]
    window = [r for r in records if "images_per_s" in r][1:]  # the first window includes start-up
    return {
        "images_per_s": sum(r["images_per_s"] for r in window) / len(window),
        "data_wait_fraction": sum(r["data_wait_fraction"] for r in window) / len(window),
    }


def write_report(out: Path, lines: Sequence[str]) -> None:
    """Write a results file (Markdown lines) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def machine() -> str:
    import torch

    from launch.plan.profile import cpu_model

    cpu = cpu_model()

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_throughput.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sh("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(tmp / "raw"))
        sh("-m", "data_prep", "cifar10", "--src", str(tmp / "raw" / "cifar-10-batches-py"), "--out",
           str(tmp / "shards"), "--samples-per-shard", "400", "--no-progress")
        results = {b: measure(b, tmp / "shards", tmp / "runs", args.model, args.steps, args.nproc, args.batch)
                   for b in ("synthetic", "dali")}

    ratio = results["dali"]["images_per_s"] / results["synthetic"]["images_per_s"]
    lines = [
        "# Training throughput",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/train_throughput.py --model {args.model} --steps {args.steps} "
        f"--nproc {args.nproc} --batch {args.batch}` ({args.nproc} processes, DDP, global batch {args.batch}, "
        "32x32 digits in CIFAR format; the first logging window, with start-up, is left out).",
        "",
        "| data | images/s | fraction of step time waiting for data |",
        "|---|---|---|",
        *(f"| {b} | {r['images_per_s']:.0f} | {r['data_wait_fraction']:.3f} |" for b, r in results.items()),
        "",
        f"real/synthetic (data-stall ratio): {ratio:.2f}",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

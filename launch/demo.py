"""`make demo`: the whole path on a small real dataset, on this machine's CPU, in a few minutes.

  1. scikit-learn's 1,797 real handwritten digits, written in CIFAR-10's python-batch format;
  2. `data_prep` shards them into WebDataset tars with DALI index files and verifies them;
  3. `launch local` trains a CIFAR ResNet in 2 processes (DDP over gloo) through the DALI loader,
     with checkpoints and an offline W&B run, and evaluates it on the test split;
  4. `pipeline.evaluate` scores the best checkpoint again in 2 processes and measures the std of each
     3x3 layer's response (Fig. 7);
  5. `pipeline.report` writes the run's table, training curves and layer responses (Markdown + PNG),
     as it does for the paper's tables (configs/tables/);
  6. `pipeline.export` exports that checkpoint (safetensors with model.json, and ONNX), and two test digits
     are written as image files, for the `python -m pipeline.predict` command it prints to try.

Run it again and it resumes (or, finished, just re-evaluates): nothing is redone that is complete.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from launch.submit.local import torchrun_command
from pipeline.config.ranges import AT_LEAST_1
from pipeline.run.layout import RunDir
from pipeline.run.results import read_results
from pipeline.tables.spec import planned_runs

DEMO_TABLES = Path(__file__).resolve().parents[1] / "configs" / "demo" / "tables"
REPORTS = ("digits.yaml", "digits_curves.yaml", "digits_responses.yaml")


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _run(*args: str) -> None:
    """Run a project command in a child process, as a user would, and stop on failure."""
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="directory for the demo's data and runs (default: demo)")
    parser.add_argument("--nproc", type=AT_LEAST_1.parse_int, default=2, help="training processes (default: 2)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    raw, shards, runs, report = out / "raw", out / "digits", out / "runs", out / "report"

    _step("1. The digits in CIFAR-10's format (real photos of handwriting from scikit-learn)")
    _run("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(raw))

    _step("2. Sharding into WebDataset tars, then verifying every shard")
    _run("-m", "data_prep", "cifar10", "--src", str(raw / "cifar-10-batches-py"), "--out", str(shards),
         "--samples-per-shard", "400")
    _run("-m", "data_prep", "verify", str(shards))

    # The run the demo's report tables plan (seed 0 of their one row), so the report finds it.

    run = planned_runs(DEMO_TABLES / REPORTS[0], runs, extra_overrides=(f"data.root={shards}",))[0]
    run_dir = run.run_dir

    _step(f"3. Training a CIFAR ResNet with DDP in {args.nproc} processes on the CPU (DALI loader)")
    _run("-m", "launch", "local", str(run.config_path), *run.overrides, "--nproc", str(args.nproc))

    _step(f"4. Evaluating the best checkpoint in {args.nproc} processes, with Fig. 7's layer responses")
    evaluate = torchrun_command("pipeline.evaluate", [str(run_dir), "--checkpoint", "best", "--layer-responses"],
                                args.nproc)
    print("$ python " + " ".join(evaluate[1:]), flush=True)
    threads = str(max(1, (os.cpu_count() or 1) // args.nproc))  # as `launch local` does
    subprocess.run(evaluate, check=True, env={**os.environ, "OMP_NUM_THREADS": threads})

    _step("5. The report: the run's table, curves and layer responses")
    _run("-m", "pipeline.report", *[str(DEMO_TABLES / name) for name in REPORTS], "--runs", str(runs),
         "--out", str(report))

    _step("6. Exporting the net (safetensors with model.json, and ONNX), each checked in the library that runs it")
    _run("-m", "pipeline.export", str(run_dir), "--to", "safetensors,onnx", "--checkpoint", "best")
    run = RunDir(run_dir)
    export = run.export(read_results(run_dir)["eval"]["center"]["step"])  # the best checkpoint, which step 4 scored
    samples = _write_samples(shards, out / "samples")

    result = read_results(run_dir)["train"]
    print(f"\ntest error: {result['top1_error']:.2f}% (top-5 {result['top5_error']:.2f}%, "
          f"{result['samples']} test images, {result['step']} steps)")
    print(f"report:         {report}/  ({', '.join(sorted(p.name for p in report.iterdir()))})")
    print(f"run directory:  {run_dir}")
    print(f"checkpoints:    {run.checkpoints}")
    print(f"metrics:        {run.metrics}")
    print(f"export:         {export}/  ({', '.join(sorted(p.name for p in export.iterdir()))})")
    wandb_runs = sorted(run.wandb.glob("offline-run-*"))
    if wandb_runs:
        print(f"offline W&B run: {wandb_runs[-1]}  (upload with `wandb sync {wandb_runs[-1]}`)")
    print(f"\ntry the exported net on test digits (or any image):\n"
          f"  python -m pipeline.predict {export} {' '.join(str(p) for p in samples)}")
    return 0


def _write_samples(dataset: Path, folder: Path, count: int = 2) -> list[Path]:
    """The first `count` images of the test split as files, named by their class (their stored bytes: the
    split's own format, PNG for the digits)."""
    from pipeline.data.dataset import open_split, read_manifest  # noqa: PLC0415 - loads torch: not for --help

    split = open_split(dataset, "test")
    names = {c.index: c.name for c in read_manifest(dataset).classes}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ref in enumerate(split.sample_refs()[:count]):
        data, label = split.read_sample(ref)
        paths.append(folder / f"test-{i:04d}-{names[label]}.{split.image_ext}")
        paths[-1].write_bytes(data)
    return paths


if __name__ == "__main__":
    sys.exit(main())

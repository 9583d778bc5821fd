"""Per-rank overheads that grow with the number of GPUs, measured on this CPU machine.

    python benchmarks/scale_overheads.py [--only syncs,startup,checkpoint,engines] [--out FILE [--append]]
                                         [--heading TEXT]

Each section is a module of benchmarks/overheads/ (`--only` picks them; default all), each measuring the real
components:
  syncs       host syncs (calls that make the host wait for the device on a GPU: `Tensor.item`, `__int__`,
              `__float__`, `__bool__`, `tolist`, `cpu`, `numpy`) counted while `pipeline.train.train` runs in
              this process (world of 1, CPU, the digits dataset): per training step and per evaluation batch.
              A GPU rank stalls its stream at each; the more GPUs, the shorter each one's step and the more
              such a stall weighs (and a collective behind one waits for the slowest rank).
  startup     what each of 2 ranks (gloo) reads to open its data (`build_loader`, train and evaluation, as
              `pipeline.train._prepare` does): files opened, bytes read, seconds, on a prepared dataset of
              16 and of 1,024 shards per split (ImageNet's 1,251 samples per train shard); every rank of
              the job does this, so the file system serves N times it.
  checkpoint  seconds the training loop is blocked by one synchronous save (`CheckpointStore.save` with the
              trainer's `write`) of ResNet-50 and ResNet-152 state; the background variant when the trainer
              has one (`measure_background_save`).
  engines     DeepSpeed against DDP: seconds per step of the same net, batch and 2 ranks (gloo), alternating.

Prints Markdown (one section per measurement, under `--heading`) and writes it to `--out`; a section that
fails (an API it uses has changed) says so in its place and the others still run (exit code 1).
Takes about 5-10 minutes on 2 cores. Results: benchmarks/results/scale_overheads.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

# benchmarks/overheads/, beside this script (the sections import pipeline/ only when they run).
from overheads.checkpoint import checkpoint_blocking
from overheads.common import Lines, code_description, machine
from overheads.engines import engine_step_times
from overheads.startup import startup_child, startup_reads
from overheads.syncs import host_syncs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's pipeline/, ahead of any installed copy


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], Lines]] = {
    "syncs": host_syncs, "startup": startup_reads, "checkpoint": checkpoint_blocking, "engines": engine_step_times}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown section here (default: print only)")
    parser.add_argument("--append", action="store_true", help="append to --out (e.g. an \"after\" section to "
                        "benchmarks/results/scale_overheads.md) instead of replacing it")
    parser.add_argument("--heading", default=None, help="the Markdown heading of this run (default: its commit)")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the data, runs and checkpoints go")
    parser.add_argument("--model", default="cifar_resnet8", help="syncs: the net")
    parser.add_argument("--sync-steps", type=int, default=100)
    parser.add_argument("--sync-backend", default="torch", choices=("torch", "dali", "synthetic"))
    parser.add_argument("--shards", default="16,1024", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--train-per-shard", type=int, default=1251)
    parser.add_argument("--val-per-shard", type=int, default=49)
    parser.add_argument("--image-bytes", type=int, default=110_000)
    parser.add_argument("--repeats", type=int, default=3, help="checkpoint: saves per net")
    parser.add_argument("--engine-model", default="cifar_resnet20")
    parser.add_argument("--engine-batch", type=int, default=32, help="engines: images per rank")
    parser.add_argument("--engine-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help="engines: rounds of both engines (even: ABBA)")
    parser.add_argument("--startup-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.startup_child is not None:
        return startup_child(args.startup_child)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    # Every child process (data_prep, `launch local`, its ranks, the start-up ranks) imports this checkout too.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    code = code_description()
    command = "python benchmarks/scale_overheads.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines = [f"## {args.heading or code.split(';')[0]}", "", f"Machine: {machine()}.", f"Code: {code}.",
             f"Command: `{command.strip()}`", ""]
    failed = False
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="scale-overheads-") as work:
        for name in chosen:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                section = SECTIONS[name](args, Path(work))
            except Exception as e:  # noqa: BLE001 - the other sections still run; this one says why it has no figures
                traceback.print_exc()
                failed = True
                section = [f"### {name}", "", f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
            lines += [*section, "", f"({name}: {time.perf_counter() - start:.0f} s)", ""]
    lines += [f"Load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        before = args.out.read_text() if args.append and args.out.exists() else ""
        gap = "" if not before else "\n" if before.endswith("\n") else "\n\n"
        args.out.write_text(before + gap + text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

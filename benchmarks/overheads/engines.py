"""Section `engines`: DeepSpeed against DDP, seconds per step of the same net and ranks."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from overheads.common import ENGINES, Lines, digits, median, table


def engine_step_times(args: argparse.Namespace, work: Path) -> Lines:
    from train_throughput import measure  # `launch local` runs, read back from metrics.jsonl

    from pipeline.run.layout import RunDir  # this commit's own layout

    shards = digits(work)
    out = work / "engine-runs"
    batch = 2 * args.engine_batch  # global: 2 ranks
    per_step: dict[str, list[float]] = {e: [] for e in ENGINES}
    rounds: dict[str, list[float]] = {e: [] for e in ENGINES}
    for r in range(args.rounds):
        for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:  # ABBA: a drift in the machine's load cancels
            name = f"{engine}-{r}"
            try:
                measure("synthetic", shards, out, args.engine_model, args.engine_steps, 2, batch,
                        extra=[f"engine.name={engine}"], name=name)
            except subprocess.CalledProcessError as e:
                raise RuntimeError(f"{engine} run failed: {(e.stderr or b'').decode(errors='replace')[-3000:]}") from e
            records = [json.loads(line) for line in RunDir(out / name).metrics.read_text().splitlines()]
            windows = [batch / rec["images_per_s"] for rec in records if "images_per_s" in rec][1:]
            per_step[engine] += windows
            rounds[engine].append(median(windows))
            print(f"{engine}: {1000 * rounds[engine][-1]:.1f} ms/step", flush=True)
    ddp, ds = median(per_step["ddp"]), median(per_step["deepspeed"])
    paired = [d / p for d, p in zip(rounds["deepspeed"], rounds["ddp"])]  # each round's two runs were adjacent
    lines = ["### 4. DeepSpeed against DDP: seconds per step", "",
             f"`benchmarks/train_throughput.py`'s `measure` (`python -m launch local configs/demo/digits.yaml ... "
             f"--nproc 2`, gloo, CPU, 1 thread per rank): `{args.engine_model}`, {args.engine_batch} images per rank "
             f"(global {batch}), data.backend=synthetic (no input pipeline), fp32, {args.engine_steps} steps logged "
             f"every 10; engine.name=ddp or deepspeed (ZeRO stage 0, the default), {args.rounds} rounds alternating "
             "ABBA. Seconds per step of each logged window (global batch / images per second) after the first "
             "(start-up): the median of each run, and the median over every window of every round. Each round's two "
             "runs follow each other, so their ratio is the one least moved by other work on the machine.", ""]
    lines += table(["engine", "ms per step, median of each round", "median over all windows"],
                   [[e, ", ".join(f"{1000 * v:.1f}" for v in rounds[e]), f"{1000 * median(per_step[e]):.1f}"]
                    for e in ENGINES])
    lines += ["", f"deepspeed / ddp, each round: {', '.join(f'{r:.3f}' for r in paired)}; median of the rounds' "
                  f"ratios {median(paired):.3f}; ratio of the medians over all windows {ds / ddp:.3f} "
                  f"({1000 * (ds - ddp):+.1f} ms per step)."]
    return lines


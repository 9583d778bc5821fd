"""ResNet-1202's peak memory for one training step, with and without activation checkpointing.

    python benchmarks/big_net_memory.py [--batch 128] [--device auto] [--min-free-gb 2]

Each variant runs in a fresh process: ResNet-1202 (`cifar_resnet1202`) built and prepared by the
engine (`DDPEngine`, one process, the paper's SGD), then one `train_step` on a batch of random 32x32
images - forward, backward (recomputing each block's activations with `engine.activation_checkpointing`),
optimizer step. On a GPU the peak is `torch.cuda.max_memory_allocated`; on a CPU it is the process's peak
resident set (`VmHWM`), which also counts Python, torch and the allocator's slack: the difference between
the variants is the activations. The parent watches the machine's available memory and kills a variant
that would leave less than `--min-free-gb` (such a row reads "stopped"), so a big batch cannot push other
work on a shared machine out of memory. Results: benchmarks/results/big_net_memory.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from train_throughput import REPO, machine, write_report  # benchmarks/ is this script's directory

VARIANTS = {"stored activations": False, "activation checkpointing": True}


def child(checkpointing: bool, batch: int, device_name: str, threads: int) -> None:
    """One training step in this process; prints one JSON line with the memory and the time."""
    sys.path.insert(0, str(REPO))
    import torch

    if threads:
        torch.set_num_threads(threads)
    from pipeline.config.schema import EngineConfig, ModelConfig, OptimConfig
    from pipeline.dist import DistInfo
    from pipeline.dist.process import resolve_device
    from pipeline.engine.ddp import DDPEngine
    from pipeline.models import build_model

    info = DistInfo()
    device = resolve_device(device_name, info)
    torch.manual_seed(0)
    engine = DDPEngine(EngineConfig(activation_checkpointing=checkpointing),
                       build_model(ModelConfig(name="cifar_resnet1202", num_classes=10)), OptimConfig(), 0.1,
                       info, device)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _proc_status_kib("VmRSS") * 1024
    start = time.perf_counter()
    loss, _ = engine.train_step(images, labels)
    loss = float(loss)  # waits for the step
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else _proc_status_kib("VmHWM") * 1024
    print(json.dumps({"peak_mb": peak / 2**20, "before_mb": before / 2**20, "seconds": seconds, "loss": loss,
                      "device": str(device)}))


def _proc_status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _available_gb() -> float:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    return int(line.split()[1]) / 2**20


def run_variant(checkpointing: bool, batch: int, device: str, threads: int, min_free_gb: float) -> dict | None:
    """The child's JSON, or None when it was stopped for leaving too little memory to the machine."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(int(checkpointing)), "--batch", str(batch),
                             "--device", device, "--threads", str(threads)], stdout=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if _available_gb() < min_free_gb:
            proc.kill()
            proc.wait()
            return None
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"the {'checkpointed' if checkpointing else 'plain'} step failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default). On a busy machine 1 avoids OpenMP stalls")
    parser.add_argument("--min-free-gb", type=float, default=2.0,
                        help="stop a variant when the machine's available memory falls below this")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "big_net_memory.md"))
    parser.add_argument("--child", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(bool(args.child), args.batch, args.device, args.threads)
        return 0

    rows, device = [], "?"
    for name, checkpointing in VARIANTS.items():
        result = run_variant(checkpointing, args.batch, args.device, args.threads, args.min_free_gb)
        if result is None:
            rows.append(f"| {name} | {args.batch} | stopped: < {args.min_free_gb:g} GB left to the machine | - | - |")
            continue
        device = result["device"]
        rows.append(f"| {name} | {args.batch} | {result['peak_mb']:,.0f} | {result['before_mb']:,.0f} | "
                    f"{result['seconds']:.1f} |")
    measure = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak RSS of the process (VmHWM)"
    write_report(Path(args.out), [
        "# ResNet-1202: peak memory of one training step, with and without activation checkpointing",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/big_net_memory.py --batch {args.batch} --device {args.device} "
        f"--threads {args.threads}` "
        f"(device {device}; one fresh process per variant; `DDPEngine.train_step` of `cifar_resnet1202`, "
        "fp32, SGD with momentum, random 32x32 images).",
        "",
        f"| variant | batch | peak memory MB ({measure}) | MB before the step (model, optimizer, batch) "
        "| step seconds |",
        "|---|---|---|---|---|",
        *rows,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())

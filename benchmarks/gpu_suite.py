"""The GPU suite: one command that measures every figure a one-GPU machine should report, in one file.

    python benchmarks/gpu_suite.py [--reduced] [--rows KEY,KEY,...] [--budget-s S] [--out FILE]

On a machine with one CUDA GPU it measures, within `--budget-s` (480 s: the time guard skips, and lists,
the rows that would not fit), on data it builds itself (`data_prep synth` + `data_prep imagenet|cifar10`):
  - DALI "mixed" (nvJPEG) decode-only and paper-augmentation images/s on ImageNet-sized shards;
  - ResNet-50 and ResNet-152 training images/s, bf16 + channels_last, with synthetic data and with real
    shards through DALI (real/synthetic is the data-stall ratio), with and without torch.compile;
  - DeepSpeed ZeRO-1 against the DDP engine on the same model (ResNet-50, synthetic data; with one GPU both
    run one rank, so this is each engine's own step overhead, not its communication);
  - CIFAR ResNet-20's step time at the paper's batch and the projected time of its 64k iterations;
  - ResNet-1202's peak CUDA memory at batch 128, with and without activation checkpointing.
Training rows run `pipeline.train` for real through `benchmarks/train_throughput.py`'s `measure` (one
process, one GPU; the first logging window, with start-up and compilation, is left out).

On a machine without a GPU (or with --reduced) every row runs a reduced setting (tiny images, batches and
step counts) so CI can run the whole suite: the figures then only show the paths work. Where the GPU
measurement has no CPU form the CPU counterpart runs instead (DALI CPU decode for "mixed", peak RSS for
CUDA memory) and the table says so; torch.compile rows need a GPU (see COMPILE_ON_CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from train_throughput import REPO, machine, measure, sh, write_report  # benchmarks/ is this script's directory

GPU_BUDGET_S = 480.0  # the whole suite in 8 minutes on one GPU
CPU_BUDGET_S = 1800.0  # 2 busy cores: a training row's start-up alone can take a minute
# torch.compile (Inductor) of ResNet-50's training step (32 px, batch 2) on 2 CPU cores had not finished its
# first step after 3.5 minutes here (2026-11-29, a busy machine), for a figure that says nothing about the
# GPU's: not run on CPU.
COMPILE_ON_CPU = "needs a GPU: not run (torch.compile of the training step takes minutes on 2 CPU cores)"


@dataclass(frozen=True)
class Setting:
    """One size of a row: the model, the data it reads and how much of it, and the config overrides."""

    model: str = ""
    data: str = "synthetic"  # training: synthetic | dali (real shards); loader rows: decode | paper; derived
    batch: int = 0
    steps: int = 0  # training steps; loader rows: passes over the shards after a warm-up pass
    image: int = 224
    log_every: int = 10
    overrides: tuple[str, ...] = ()
    estimate_s: float = 30.0  # the expected wall time, for the time guard

    def describe(self, gpu: bool) -> str:
        where = "1 GPU" if gpu else "CPU"
        if self.data == "derived":
            return "cifar20-step's ms/step x 64000 / 60000"
        if self.data in ("decode", "paper"):
            what = "reader + decode only" if self.data == "decode" else "augmentation=paper at 224, float NCHW out"
            passes = f"{self.steps} pass" + ("es" if self.steps > 1 else "")
            return f"DALI {'mixed' if gpu else 'cpu'} decode, batch {self.batch}, {passes}, {what}"
        data = {"synthetic": "synthetic data", "dali": f"real shards via DALI ({'mixed' if gpu else 'cpu'})"}
        flags = " ".join(o for o in self.overrides if o.startswith("engine."))
        return (f"{self.model}, {self.image} px, batch {self.batch}, {self.steps} steps, {where}, "
                f"{data[self.data]}" + (f"; {flags}" if flags else ""))


@dataclass(frozen=True)
class Row:
    """One line of the table: what it measures, its GPU setting and its reduced CPU setting."""

    key: str
    what: str
    kind: str  # loader | train | step | project | memory
    units: str
    gpu: Setting
    cpu: Setting | None  # None: the row needs a GPU (cpu_note says why)
    cpu_note: str = ""  # on CPU: what runs instead, or why nothing does
    baseline: str = ""  # the row this one is compared with: "<key>:<what the ratio is>"
    dataset: str = "imagenet"  # imagenet | cifar | none


BF16_CL = ("engine.precision=bf16", "engine.channels_last=true")


def _net(model: str, data: str, gpu: bool, extra: tuple[str, ...] = (), gpu_s: float = 30,
         cpu_s: float = 60) -> Setting:
    """The GPU or the reduced CPU setting of an ImageNet training row."""
    full = Setting(model, data, 256, 40, 224, 10, BF16_CL + extra, gpu_s)
    reduced = Setting(model, data, 2, 3, 32, 1, BF16_CL + extra, cpu_s)
    return full if gpu else reduced


def _train_row(key: str, model: str, label: str, data: str, compile_: bool, gpu_s: float, cpu_s: float,
               baseline: str = "") -> Row:
    extra = ("engine.compile=true",) if compile_ else ()
    what = f"{label} training, {'synthetic data' if data == 'synthetic' else 'real shards (DALI)'}" + \
        (", torch.compile" if compile_ else "") + (" (DDP engine)" if key == "r50-synthetic" else "")
    return Row(key, what, "train", "images/s", _net(model, data, True, extra, gpu_s),
               None if compile_ else _net(model, data, False, extra, cpu_s=cpu_s),
               COMPILE_ON_CPU if compile_ else "", baseline)


ROWS: tuple[Row, ...] = (  # in priority order: the time guard drops from the end
    Row("dali-decode", "DALI decode-only, ImageNet-sized JPEGs", "loader", "images/s",
        Setting(data="decode", batch=64, steps=3, estimate_s=15),
        Setting(data="decode", batch=8, steps=1, estimate_s=15),
        "CPU counterpart: DALI CPU decode (mixed needs a GPU)"),
    Row("dali-paper", "DALI paper augmentation, ImageNet-sized JPEGs", "loader", "images/s",
        Setting(data="paper", batch=64, steps=3, estimate_s=15), Setting(data="paper", batch=8, steps=1, estimate_s=20),
        "CPU counterpart: DALI CPU decode + torch resize (mixed needs a GPU)"),
    _train_row("r50-synthetic", "resnet50", "ResNet-50", "synthetic", False, 25, 60),
    _train_row("r50-real", "resnet50", "ResNet-50", "dali", False, 25, 70, "r50-synthetic:data-stall ratio"),
    _train_row("r152-synthetic", "resnet152", "ResNet-152", "synthetic", False, 30, 90),
    _train_row("r152-real", "resnet152", "ResNet-152", "dali", False, 30, 90, "r152-synthetic:data-stall ratio"),
    Row("r50-zero1", "ResNet-50 training, synthetic data, DeepSpeed ZeRO-1", "train", "images/s",
        _net("resnet50", "synthetic", True, ("engine.name=deepspeed", "engine.zero_stage=1")),
        _net("resnet50", "synthetic", False, ("engine.name=deepspeed", "engine.zero_stage=1"), cpu_s=70),
        baseline="r50-synthetic:ZeRO-1/DDP"),
    Row("cifar20-step", "CIFAR ResNet-20 step time, batch 128 (the paper's), fp32, real shards", "step", "ms/step",
        Setting("cifar_resnet20", "dali", 128, 300, 32, 50, (), 25),
        Setting("cifar_resnet20", "dali", 128, 6, 32, 1, (), 40), dataset="cifar"),
    Row("cifar20-64k", "CIFAR ResNet-20, projected time of the paper's 64k iterations", "project", "min",
        Setting(data="derived", estimate_s=0), Setting(data="derived", estimate_s=0),
        baseline="cifar20-step:step time x 64000", dataset="none"),
    Row("r1202-memory", "ResNet-1202 peak memory, fp32, no checkpointing", "memory", "MiB",
        Setting("cifar_resnet1202", "synthetic", 128, 4, 32, 1, (), 30),
        Setting("cifar_resnet1202", "synthetic", 4, 2, 32, 1, (), 90),
        "CPU counterpart: peak RSS of the rank (CUDA memory needs a GPU)", dataset="cifar"),
    Row("r1202-memory-ckpt", "ResNet-1202 peak memory, fp32, activation checkpointing", "memory", "MiB",
        Setting("cifar_resnet1202", "synthetic", 128, 4, 32, 1, ("engine.activation_checkpointing=true",), 45),
        Setting("cifar_resnet1202", "synthetic", 4, 2, 32, 1, ("engine.activation_checkpointing=true",), 100),
        "CPU counterpart: peak RSS of the rank (CUDA memory needs a GPU)", "r1202-memory:with/without", "cifar"),
    # Compiled rows last: the first compile of each net is the suite's most expensive step; the second
    # (real shards) finds Inductor's cache warm.
    _train_row("r50-compile-synthetic", "resnet50", "ResNet-50", "synthetic", True, 90, 0),
    _train_row("r50-compile-real", "resnet50", "ResNet-50", "dali", True, 45, 0,
               "r50-compile-synthetic:data-stall ratio"),
    _train_row("r152-compile-synthetic", "resnet152", "ResNet-152", "synthetic", True, 180, 0),
    _train_row("r152-compile-real", "resnet152", "ResNet-152", "dali", True, 80, 0,
               "r152-compile-synthetic:data-stall ratio"),
)
PREP_ESTIMATE_S = {"imagenet": (40.0, 30.0), "cifar": (10.0, 15.0), "none": (0.0, 0.0)}  # (GPU, CPU)


class Datasets:
    """Builds each dataset the first time a row needs it: ImageNet-sized JPEG shards and CIFAR-format ones."""

    def __init__(self, root: Path, gpu: bool) -> None:
        self.root, self.gpu = root, gpu
        self.built: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self.built:
            out = self.root / name
            if name == "imagenet":  # 400-500 px long sides: ImageNet's own photos average ~470x390
                classes, per_class = (16, 128) if self.gpu else (4, 8)
                sh("-m", "data_prep", "synth", "--kind", "imagenet", "--out", str(self.root / "imagenet-src"),
                   "--classes", str(classes), "--per-class", str(per_class), "--val-per-class", "2",
                   "--long-side", "400", "501")
                sh("-m", "data_prep", "imagenet", "--src", str(self.root / "imagenet-src"), "--out", str(out),
                   "--workers", str(max(1, min(8, os.cpu_count() or 1))), "--no-progress", "--no-fsync")
            else:  # the scikit-learn digits in CIFAR-10's format (all 1,797 on a GPU, 20 a class on CPU)
                cap = () if self.gpu else ("--per-class", "20")
                sh("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(self.root / "cifar-src"), *cap)
                sh("-m", "data_prep", "cifar10", "--src", str(self.root / "cifar-src" / "cifar-10-batches-py"),
                   "--out", str(out), "--no-progress")
            self.built[name] = out
        return self.built[name]


def loader_rate(s: Setting, root: Path, gpu: bool) -> float:
    """Images/s of DALI's decode-only pipeline or of the paper-augmentation loader (loader_throughput's)."""
    import torch
    from loader_throughput import dali_decode_only, rate

    from pipeline.config.schema import DataConfig
    from pipeline.data import build_loader
    from pipeline.dist import DistInfo

    threads = min(16, len(os.sched_getaffinity(0))) if gpu else 1
    if s.data == "decode":
        batches: Callable = dali_decode_only(root, threads, s.batch, "gpu" if gpu else "cpu")
        count: Callable = lambda b: int(b[0]["shape"].shape[0])  # noqa: E731
    else:
        cfg = DataConfig(backend="dali", root=str(root), augmentation="paper", image_size=224, batch_size=s.batch,
                         num_threads=threads, shuffle_buffer=256, pca_lighting=0.1)
        loader = build_loader(cfg, "train", DistInfo(), device=torch.device("cuda", 0) if gpu else torch.device("cpu"))
        batches, count = (lambda: loader), (lambda b: len(b[1]))
    return rate(batches, count, s.steps)[0]


def train_overrides(row: Row, s: Setting, gpu: bool) -> list[str]:
    """Config overrides for `measure` (whose config is the digits demo: the CIFAR recipe) for this row."""
    out = [f"logging.every_steps={s.log_every}", f"data.num_threads={min(8, os.cpu_count() or 1) if gpu else 1}",
           "data.shuffle_buffer=512", *s.overrides]
    if row.dataset == "imagenet":  # the paper's ImageNet recipe, scaled to the row's crop size
        scale = lambda px: str(round(s.image * px / 224))  # noqa: E731
        out += ["data.augmentation=paper", "data.eval_split=val", "model.num_classes=1000",
                f"data.image_size={s.image}", f"data.resize_min={scale(256)}", f"data.resize_max={scale(480)}",
                f"eval.resize={scale(256)}", "data.eval_batch_per_gpu=64"]
    return out


def run_row(row: Row, s: Setting, gpu: bool, data: Datasets, runs: Path, results: dict[str, dict]) -> dict:
    """Measure one row; returns {figure, note}."""
    from pipeline.run.layout import RunDir  # this commit's own layout (benchmarks run against older commits too)

    if row.kind == "project":
        step_key = row.baseline.split(":")[0]
        step = results.get(step_key, {}).get("figure")
        if step is None:
            return {"figure": None, "note": f"not run: needs row {step_key}"}
        return {"figure": step * 64000 / 1000 / 60, "note": f"{step:.1f} ms/step x 64000 iterations"}
    if row.kind == "loader":
        return {"figure": loader_rate(s, data.get(row.dataset), gpu), "note": ""}
    backend = "dali" if s.data == "dali" else "synthetic"
    r = measure(backend, data.get(row.dataset), runs, s.model, s.steps, 1, s.batch,
                extra=train_overrides(row, s, gpu), name=row.key)
    if row.kind == "step":
        return {"figure": 1000 * s.batch / r["images_per_s"], "note": f"data wait {r['data_wait_fraction']:.3f}"}
    if row.kind == "memory":
        records = [json.loads(line) for line in RunDir(runs / row.key).metrics.read_text().splitlines()]
        return {"figure": max(rec.get("memory_mb", 0.0) for rec in records), "note": ""}
    return {"figure": r["images_per_s"], "note": f"data wait {r['data_wait_fraction']:.3f}"}


def compare(row: Row, results: dict[str, dict]) -> str:
    """The row's ratio to its baseline row, when both ran (data-stall ratio, ZeRO-1/DDP, ...)."""
    if not row.baseline or row.kind == "project":
        return ""
    key, label = row.baseline.split(":", 1)
    mine, theirs = results.get(row.key, {}).get("figure"), results.get(key, {}).get("figure")
    if mine is None or theirs is None or not theirs:
        return ""
    return f"{label} (vs {key}): {mine / theirs:.2f}"


def describe_machine() -> str:
    """train_throughput's machine line, with the GPU's memory and the DALI and DeepSpeed versions."""
    import torch

    text = machine()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        text += f", {props.total_memory // 2**20} MiB GPU memory, CUDA {torch.version.cuda}"
    for package in ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130", "deepspeed"):
        try:
            text += f", {package} {metadata.version(package)}"
        except metadata.PackageNotFoundError:
            pass
    return text


def plan(rows: Sequence[Row], gpu: bool) -> list[tuple[Row, Setting | None, str]]:
    """Each selected row with the setting it runs at here, or None and the reason it does not run."""
    return [(row, row.gpu if gpu else row.cpu, "" if gpu or row.cpu else row.cpu_note) for row in rows]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true", help="the CPU-sized rows, even with a GPU")
    parser.add_argument("--rows", default="", help="comma-separated row keys (default: all): " +
                        ", ".join(r.key for r in ROWS))
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"skip rows that would end past this (default {GPU_BUDGET_S:.0f} on a GPU, "
                             f"{CPU_BUDGET_S:.0f} reduced)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_suite.md")
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.reduced
    budget = args.budget_s if args.budget_s is not None else (GPU_BUDGET_S if gpu else CPU_BUDGET_S)
    wanted = [k for k in args.rows.split(",") if k]
    unknown = sorted(set(wanted) - {r.key for r in ROWS})
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)} (rows: {', '.join(r.key for r in ROWS)})")
    selected = [r for r in ROWS if not wanted or r.key in wanted]

    start = time.monotonic()
    results: dict[str, dict] = {}
    over_budget: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        data = Datasets(Path(tmp), gpu)
        for row, setting, reason in plan(selected, gpu):
            where = "GPU" if gpu else "CPU (reduced)"
            entry = {"figure": None, "ran_on": "-", "setting": (setting or row.gpu).describe(gpu or setting is None)}
            if setting is None:
                entry["note"] = reason
            else:
                prep = 0.0 if row.dataset in data.built else PREP_ESTIMATE_S[row.dataset][0 if gpu else 1]
                ends = time.monotonic() - start + prep + setting.estimate_s
                if ends > budget:
                    over_budget.append(row.key)
                    entry["note"] = f"skipped: time budget (would end at ~{ends:.0f} s of {budget:.0f} s)"
                else:
                    print(f"[{time.monotonic() - start:.0f} s] {row.key}: {entry['setting']}", flush=True)
                    try:
                        entry.update(run_row(row, setting, gpu, data, Path(tmp) / "runs", results))
                        entry["ran_on"] = where if entry["figure"] is not None else "-"
                    except Exception as e:  # noqa: BLE001 - one failed row must not lose the others' figures
                        err = getattr(e, "stderr", None)
                        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1] if err else str(e)
                        entry["note"] = f"failed: {last[:200]}"
                    if setting is not None and not gpu and row.cpu_note:
                        entry["note"] = "; ".join(x for x in (row.cpu_note, entry["note"]) if x)
            results[row.key] = entry
    total = time.monotonic() - start

    for row in ROWS:  # every row appears, so a subset's table still shows what the suite holds
        results.setdefault(row.key, {"figure": None, "ran_on": "-", "setting": row.gpu.describe(True),
                                     "note": "not run: not selected (--rows)"})
        extra = compare(row, results)
        if extra:
            results[row.key]["note"] = "; ".join(x for x in (results[row.key]["note"], extra) if x)
    lines = [
        "# GPU suite",
        "",
        f"Machine: {describe_machine()}.",
        f"Command: `python benchmarks/gpu_suite.py{' --reduced' if args.reduced else ''}"
        f"{' --rows ' + args.rows if args.rows else ''}{f' --budget-s {args.budget_s:g}' if args.budget_s else ''}` "
        f"({'GPU settings' if gpu else 'reduced CPU settings: the figures show the paths run, not the GPU rates'}; "
        f"{total:.0f} s, budget {budget:.0f} s).",
        "",
        "| row | measures | figure | units | ran on | setting | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        r = results[row.key]
        figure = "-" if r["figure"] is None else f"{r['figure']:.1f}"
        lines.append(f"| {row.key} | {row.what} | {figure} | {row.units} | {r['ran_on']} | {r['setting']} | "
                     f"{r['note'] or '-'} |")
    needs_gpu = [row.key for row in ROWS if row.cpu is None or row.cpu_note.startswith("CPU counterpart")]
    lines += ["", f"Rows that need a GPU for their real figure: {', '.join(needs_gpu) or 'none'}"
              + ("" if gpu else " (here: a CPU counterpart ran, or nothing where the note says so)") + "."]
    if over_budget:
        lines.append(f"Skipped by the {budget:.0f} s time budget: {', '.join(over_budget)} "
                     f"(run them with `--rows {','.join(over_budget)}`).")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

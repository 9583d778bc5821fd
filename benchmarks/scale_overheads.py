"""Per-rank overheads that grow with the number of GPUs, measured on this CPU machine.

    python benchmarks/scale_overheads.py [--only syncs,startup,checkpoint,engines] [--out FILE [--append]]
                                         [--heading TEXT]

Each section is one function (`--only` picks them; default all), each measuring the real components:
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
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's pipeline/, ahead of any installed copy
DEMO_CONFIG = REPO / "configs" / "demo" / "digits.yaml"
IMAGENET_CONFIGS = {"ResNet-50": REPO / "configs" / "imagenet" / "resnet50.yaml",
                    "ResNet-152": REPO / "configs" / "imagenet" / "resnet152.yaml"}
SYNC_CALLS = ("item", "__int__", "__float__", "__bool__", "tolist", "cpu", "numpy")
ENGINES = ("ddp", "deepspeed")
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
Lines = List[str]


# -- shared helpers ----------------------------------------------------------------------------------------

def load_tolerant(config: Path, overrides: Sequence[str]) -> Tuple[object, List[str]]:
    """`load_config(config, overrides)`, dropping any override whose key the schema no longer knows (returned,
    to be reported): a renamed key then costs that setting, not the whole measurement."""
    from pipeline.config import ConfigError, load_config

    overrides, dropped = list(overrides), []
    while True:
        try:
            return load_config(config, overrides), dropped
        except ConfigError as e:
            named = [o for o in overrides if f"'{o.split('=', 1)[0]}'" in str(e)]
            if not named:
                raise
            overrides.remove(named[0])
            dropped.append(named[0])


def digits(work: Path) -> Path:
    """The digits in CIFAR-10's format, sharded by data_prep (as tests/conftest.py makes them); made once."""
    shards = work / "digits"
    if not (shards / "manifest.json").exists():
        for cmd in (["synth", "--kind", "cifar10", "--out", str(work / "raw")],
                    ["cifar10", "--src", str(work / "raw" / "cifar-10-batches-py"), "--out", str(shards),
                     "--no-progress"]):
            subprocess.run([sys.executable, "-m", "data_prep", *cmd], check=True, cwd=REPO, env=child_env(),
                           capture_output=True)
    return shards


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def machine() -> str:
    try:
        from train_throughput import machine as described  # benchmarks/ is this script's directory

        text = described()
    except Exception:  # noqa: BLE001 - the description must not stop the measurements
        import platform

        text = f"{os.cpu_count()} cores ({platform.processor() or 'unknown CPU'}), Python {platform.python_version()}"
    try:
        from importlib.metadata import version

        text += f", deepspeed {version('deepspeed')}"
    except Exception:  # noqa: BLE001
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{text}; load average at the start {load}"


def code_description() -> str:
    """The commit measured and where `pipeline` was imported from (a worktree must measure its own code)."""
    import pipeline

    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "pipeline", "launch",
                                "data_prep", "configs"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    changes = " with uncommitted changes in pipeline/, launch/, data_prep/ or configs/" if dirty else ""
    return f"commit {commit}{changes}; `pipeline` from {Path(pipeline.__file__).parent}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> Lines:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- 1. host syncs -----------------------------------------------------------------------------------------

class SyncCounter:
    """Counts the SYNC_CALLS made on tensors while installed, by phase and call site.

    Phase: "evaluation" while `evaluate` of pipeline's evaluation.py is on the stack; otherwise "start-up"
    until the model's first training forward, "training" after it. The model's outermost forwards are counted
    too (a global forward hook): in evaluation one per batch with one view (the centre protocol)."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()  # (phase, site, call) -> count
        self.forwards: Counter = Counter()  # phase -> outermost module forwards
        self._local = threading.local()
        self._originals: Dict[str, object] = {}
        self._hooks: list = []
        self._here = str(Path(__file__).resolve())
        self._installed = (sys.prefix, sys.base_prefix)  # a virtual environment inside the repository is not ours

    def __enter__(self) -> "SyncCounter":
        import torch
        from torch.nn.modules import module

        for name in SYNC_CALLS:
            self._originals[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        self._hooks = [module.register_module_forward_pre_hook(self._forward_in),
                       module.register_module_forward_hook(self._forward_out)]
        return self

    def __exit__(self, *exc) -> None:
        import torch

        for name, original in self._originals.items():
            if original is None:
                delattr(torch.Tensor, name)  # it was inherited: uncover the base class's
            else:
                setattr(torch.Tensor, name, original)
        for hook in self._hooks:
            hook.remove()

    def _counting(self, name: str, original):
        def call(tensor, *args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            if depth == 0:  # not a call that another counted call makes
                phase, site = self._where(sys._getframe(1))
                self.calls[(phase, site, name)] += 1
            self._local.depth = depth + 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._local.depth = depth
        return call

    def _forward_in(self, module, inputs) -> None:
        depth = getattr(self._local, "forward_depth", 0)
        if depth == 0:
            self.forwards["evaluation" if self._in_evaluate(sys._getframe(1)) else
                          "training" if module.training else "other"] += 1
        self._local.forward_depth = depth + 1

    def _forward_out(self, module, inputs, output) -> None:
        self._local.forward_depth = getattr(self._local, "forward_depth", 1) - 1

    @staticmethod
    def _in_evaluate(frame) -> bool:
        while frame is not None:
            if frame.f_code.co_name == "evaluate" and frame.f_code.co_filename.endswith("evaluation.py"):
                return True
            frame = frame.f_back
        return False

    def _ours(self, path: str) -> bool:
        return path.startswith(str(REPO)) and path != self._here and "site-packages" not in path and \
            not path.startswith(self._installed)

    def _where(self, frame) -> Tuple[str, str]:
        """(phase, site): the site is the innermost frame in this repository and its caller in another of its files
        ("pipeline/dist.py:any_rank < pipeline/train.py:_train"), plus the innermost frame when outside it."""
        inner, ours, phase = frame, [], None  # ours: the innermost frames in this repository, two files at most
        while frame is not None:
            path = frame.f_code.co_filename
            if phase is None and frame.f_code.co_name == "evaluate" and path.endswith("evaluation.py"):
                phase = "evaluation"
            if len(ours) < 2 and self._ours(path) and (not ours or ours[0][0] != path):
                ours.append((path, f"{Path(path).relative_to(REPO)}:{frame.f_code.co_name}"))
            frame = frame.f_back
        site = " < ".join(name for _, name in ours) or None
        phase = phase or ("training" if self.forwards["training"] else "start-up")
        inner_path = inner.f_code.co_filename
        if not self._ours(inner_path):
            short = inner_path.split("site-packages/")[-1]
            site = f"{site or '?'} (in {short}:{inner.f_code.co_name})"
        return phase, site or "?"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_group_of_one() -> None:
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                                timeout=datetime.timedelta(minutes=10))


def host_syncs(args: argparse.Namespace, work: Path) -> Lines:
    from pipeline.train import train

    shards = digits(work)
    out = work / "sync-runs"
    every_log, every_check = 10, 10
    overrides = [f"data.root={shards}", f"data.backend={args.sync_backend}", "data.num_threads=1",
                 "data.eval_batch_size=32", f"run.out_dir={out}", "run.name=syncs", "run.device=cpu",
                 f"model.name={args.model}", "schedule.unit=iteration", f"schedule.total={args.sync_steps}",
                 "schedule.milestones=[]", f"logging.every_steps={every_log}",
                 f"checkpoint.check_every_steps={every_check}", "checkpoint.every_minutes=0",
                 "checkpoint.every_steps=0", "eval.every_epochs=0", f"eval.every_steps={args.sync_steps // 2}",
                 # This counts the trainer's host syncs; W&B reads none of its tensors (it is given the numbers
                 # the trainer already read), so it is off: nothing but the trainer runs, and nothing is uploaded.
                 "logging.wandb_mode=disabled"]
    cfg, dropped = load_tolerant(DEMO_CONFIG, overrides)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        with SyncCounter() as counter:
            # A process group of one (gloo), as every rank of a multi-GPU job has: without one, pipeline.dist's
            # collectives (the stop/save agreement, the logged sums, the evaluation totals, `on_every_rank`)
            # return at once and their host reads would not be counted. `train` keeps this group (it starts
            # one only when there is none) and ends it; the engine stays the plain module (world of 1).
            _process_group_of_one()
            result = train(cfg)
    finally:
        os.environ.update(saved)
    steps = int(result.get("step") or counter.forwards["training"])
    records = [json.loads(line) for line in (out / "syncs" / "metrics.jsonl").read_text().splitlines()]
    evaluations = sum(1 for r in records if "val_top1_error" in r)
    per_epoch = next((r.get("steps_per_epoch") for r in records if r.get("event") == "start"), None)
    by_phase: Counter = Counter()
    for (phase, _, _), n in counter.calls.items():
        by_phase[phase] += n
    batches = counter.forwards["evaluation"]
    rows = [["training (the loop, after the first training forward)", by_phase["training"], f"{steps} steps",
             f"{by_phase['training'] / max(steps, 1):.2f}"],
            ["start-up (before the first training forward)", by_phase["start-up"], "-", "-"],
            ["start-up and training, per step (all outside evaluation)", by_phase["training"] + by_phase["start-up"],
             f"{steps} steps", f"{(by_phase['training'] + by_phase['start-up']) / max(steps, 1):.2f}"],
            ["evaluation (`evaluate` on the stack)", by_phase["evaluation"], f"{batches} batches",
             f"{by_phase['evaluation'] / max(batches, 1):.2f}"]]
    sites = sorted(counter.calls.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
    lines = ["### 1. Host syncs per training step and per evaluation batch", "",
             "`pipeline.train.train(cfg)` in this process, world of 1 in a gloo process group of its own (as a rank "
             "of a multi-GPU job has one; without it pipeline.dist's collectives skip their reads), CPU: "
             f"`{args.model}` on the digits "
             f"(`python -m data_prep synth --kind cifar10` + `python -m data_prep cifar10`, 1,500 train / 297 test), "
             f"data.backend={args.sync_backend}, batch 64, {steps} steps; logging.every_steps={every_log} (a logged "
             f"window reads its sums), checkpoint.check_every_steps={every_check} (the stop/save agreement), "
             f"a checkpoint at each epoch end (every {per_epoch} steps) and one after the final evaluation; "
             f"an evaluation every {args.sync_steps // 2} steps and the final one ({evaluations} in all, "
             f"evaluation batch 32). W&B off (logging.wandb_mode=disabled): W&B is not involved in host syncs. "
             f"Counted: calls on tensors of {', '.join(f'`{c}`' for c in SYNC_CALLS)} (each would wait for a GPU; "
             "on this CPU they cost nothing, the count is what matters). Evaluation batches: the model's outermost "
             "forwards inside `evaluate`.", ""]
    if dropped:
        lines += [f"Settings this commit's schema does not know, left out: {', '.join(dropped)}.", ""]
    if not batches:
        lines += ["No model forward ran inside `evaluate`: the evaluation is attributed by a function named "
                  "`evaluate` in a file evaluation.py on the stack; if it has moved or been renamed, update "
                  "`SyncCounter` (its syncs are counted as training until then).", ""]
    lines += table(["phase", "syncs", "over", "syncs per step / batch"], rows)
    lines += ["", "Where they are made:", ""]
    lines += table(["phase", "call site", "call", "count"], [[p, s, c, n] for (p, s, c), n in sites])
    return lines


# -- 2. start-up reads -------------------------------------------------------------------------------------

def make_sparse_dataset(root: Path, shards: int, per_shard: Dict[str, int], image_bytes: int) -> Path:
    """A prepared dataset in data_prep's format: a real manifest and real index files (data_prep's formatter);
    each tar is a sparse file of its true size (truncate) holding real tar headers only where a reader looks at
    start: before the first and the last sample's members (`_check_shard` spot-checks those)."""
    import tarfile

    import numpy as np

    from data_prep.index import format_index
    from data_prep.manifest import FORMAT, MANIFEST_NAME, VERSION, load_manifest

    block, record = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, per in per_shard.items():
        entries, gid = [], 0
        for s in range(shards):
            samples, offset = [], 0
            for _ in range(per):
                key, members = f"{split}_{gid:010d}", []
                for ext, size in (("jpg", image_bytes), ("cls", 4)):
                    members.append((ext, offset + block, size, f"{key}.{ext}"))
                    offset += block + -(-size // block) * block
                samples.append(members)
                gid += 1
            size = -(-(offset + 2 * block) // record) * record
            name = f"{split}-{s:06d}"
            (root / f"{name}.idx").write_text(format_index(samples))
            with open(root / f"{name}.tar", "wb") as f:
                f.truncate(size)
                for members in samples[:1] + samples[-1:]:
                    for _, at, length, member in members:
                        info = tarfile.TarInfo(member)
                        info.size = length
                        f.seek(at - block)
                        f.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            entries.append({"tar": f"{name}.tar", "index": f"{name}.idx", "num_samples": per, "bytes": size,
                            "sha256": "0" * 64})  # never read at start (opening checks sizes and indexes only)
        splits[split] = {"num_samples": per * shards, "found": per * shards, "rejected": 0, "shards": entries}
    np.save(root / "mean_image.npy", np.full((224, 224, 3), 110.0, dtype=np.float32))
    manifest = {"format": FORMAT, "version": VERSION, "dataset": "imagenet", "image_ext": "jpg", "label_ext": "cls",
                "classes": [{"index": i, "id": f"n{i:08d}", "name": f"class {i}"} for i in range(1000)],
                "num_classes": 1000,
                "encoding": {"reencoded": False, "max_side": None, "quality": None, "max_pixels": 40_000_000},
                "splits": splits,
                "stats": {"split": "train", "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4],
                          "mean_image": "mean_image.npy", "num_images": 1000},
                "seed": 0, "created_by": "benchmarks/scale_overheads.py (sparse tars)"}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    load_manifest(root)  # the project's own reader accepts it
    return root


def _proc_io() -> Dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def startup_child(root: Path) -> int:
    """One rank (RANK, WORLD_SIZE, MASTER_ADDR/PORT from the parent): open the data as a training rank does at
    start, count what that reads, print one JSON line."""
    import resource

    import torch

    import torch.distributed as dist

    import pipeline.data.torch_loader  # noqa: F401 - imported before counting: the module's files are not the data's
    from pipeline.data import build_loader
    from pipeline.dist import dist_info_from_env

    info = dist_info_from_env()  # torchrun's variables, set by `run_ranks`
    dist.init_process_group("gloo", init_method="env://")  # MASTER_ADDR / MASTER_PORT, RANK, WORLD_SIZE
    cfg, dropped = load_tolerant(IMAGENET_CONFIGS["ResNet-50"],
                                 [f"data.root={root}", "data.backend=torch", "data.num_threads=1", "run.device=cpu"])
    device = torch.device("cpu")
    opened: List[str] = []
    counting = [False]

    def audit(event: str, args: tuple) -> None:
        if counting[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    sys.addaudithook(audit)
    dist.barrier()
    before, start, cpu_start = _proc_io(), time.perf_counter(), cpu_s()
    counting[0] = True
    build_loader(cfg.data, cfg.data.train_split, info, train=True, device=device, seed=cfg.run.seed)
    train_s = time.perf_counter() - start
    build_loader(cfg.data, cfg.data.eval_split, info, train=False, device=device, seed=cfg.run.seed,
                 eval_resize=cfg.eval.resize)
    counting[0] = False
    seconds, cpu, after = time.perf_counter() - start, cpu_s() - cpu_start, _proc_io()
    dist.barrier()
    dist.destroy_process_group()
    prefix = str(root.resolve()) + os.sep
    kinds = Counter("idx" if p.endswith(".idx") else "tar" if p.endswith(".tar") else
                    "dataset, other" if os.path.abspath(p).startswith(prefix) else "outside the dataset"
                    for p in opened)
    non_tar_bytes = sum(os.path.getsize(p) for p in opened if os.path.abspath(p).startswith(prefix)
                        and not p.endswith(".tar"))
    print(json.dumps({"rank": info.rank, "seconds": seconds, "train_s": train_s, "cpu_s": cpu, "opened": dict(kinds),
                      "rchar": after["rchar"] - before["rchar"], "syscr": after["syscr"] - before["syscr"],
                      "non_tar_bytes": non_tar_bytes, "dropped": dropped,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def run_ranks(root: Path, world: int, timeout: int = 900) -> List[dict]:
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, __file__, "--startup-child", str(root)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=child_env(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                                            LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                            OMP_NUM_THREADS="1"))
             for r in range(world)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"a start-up rank failed ({p.returncode}):\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return sorted(results, key=lambda r: r["rank"])


def startup_reads(args: argparse.Namespace, work: Path) -> Lines:
    per_shard = {"train": args.train_per_shard, "val": args.val_per_shard}
    rows, notes = [], []
    for shards in args.shards:
        made = time.perf_counter()
        root = make_sparse_dataset(work / f"startup-{shards}", shards, per_shard, args.image_bytes)
        index_mb = sum(p.stat().st_size for p in root.glob("*.idx")) / 1e6
        notes.append(f"{shards} shards: {shards * args.train_per_shard:,} train + {shards * args.val_per_shard:,} "
                     f"val samples, {index_mb:.1f} MB of index files (made in {time.perf_counter() - made:.0f} s)")
        for r in run_ranks(root, 2):
            opened = r["opened"]
            dataset = sum(n for k, n in opened.items() if k != "outside the dataset")
            tars = opened.get("tar", 0)
            tar_kb = f"{(r['rchar'] - r['non_tar_bytes']) / 1e3 / tars:.1f}" if tars else "-"
            rows.append([f"{shards:,}", f"{r['rank']}{' (primary)' if r['rank'] == 0 else ''}", f"{dataset:,}",
                         f"{opened.get('idx', 0):,} / {opened.get('tar', 0):,} / {opened.get('dataset, other', 0)}",
                         f"{r['rchar'] / 1e6:.1f}", f"{r['syscr']:,}", tar_kb,
                         f"{r['seconds']:.2f} ({r['train_s']:.2f} + {r['seconds'] - r['train_s']:.2f})",
                         f"{r['cpu_s']:.2f}", f"{r['peak_mb']:.0f}"])
            if r["dropped"]:
                notes.append(f"settings left out (unknown to this commit's schema): {', '.join(r['dropped'])}")
    lines = ["### 2. Start-up reads per rank", "",
             "2 ranks (subprocesses, gloo process group from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), each "
             "doing what `pipeline.train._prepare` does to open its data: `build_loader(cfg.data, split, info, "
             "train=True)` for the train split, then `train=False` for the val split, with "
             "configs/imagenet/resnet50.yaml and data.backend=torch. Counted between the two calls' start and end: "
             "files opened (`sys.addaudithook`, event \"open\"; imports were done before), bytes read and read "
             "syscalls (`/proc/self/io` rchar and syscr), wall seconds and the rank's CPU seconds (user + system; "
             "the steadier figure when others share the machine). The dataset is synthetic in data_prep's "
             f"format: same samples per shard at both sizes, {args.train_per_shard:,} per train shard (ImageNet's "
             f"{IMAGENET_TRAIN:,} over 1,024 shards) and {args.val_per_shard} per val shard (its {IMAGENET_VAL:,} over "
             f"1,024), so the 1,024-shard set is ImageNet's size; index files real (`data_prep.index.format_index`), "
             "tars sparse files of their recorded size (images of "
             f"{args.image_bytes:,} bytes, ImageNet's mean JPEG). All files in the page cache (just written): the "
             "seconds are parsing and system calls, not a cold parallel file system's latency per open.", "",
             "Are the tars read at start? They are opened, once per shard per loader: `_check_shard` "
             "(pipeline/data/shards.py) reads the 512-byte tar header before the first and the last sample's "
             "members to check that the index matches its tar. So the sparse tars carry real headers (tarfile's) "
             "at exactly those places and are holes elsewhere; nothing else of a tar is read at start. The column "
             "\"KB read per tar open\" is rchar less the sizes of the non-tar files opened (each read whole), per tar "
             "opened: the buffered (8 KB) reads around those header blocks, not the images.", ""]
    lines += table(["shards per split", "rank", "dataset files opened", "of which idx / tar / other",
                    "MB read (rchar)", "read syscalls", "KB read per tar open", "seconds (train + val loader)",
                    "CPU seconds", "peak RSS MB"], rows)
    lines += ["", *[f"- {n}" for n in notes]]
    return lines


# -- 3. checkpoint saves -----------------------------------------------------------------------------------

def _engine_and_write(config: Path) -> Tuple[object, Callable[[int], Callable], float]:
    """A real ImageNet net in the DDP engine (world of 1) after one SGD step (so it has momentum), and what the
    trainer hands a save for a step (as `save_checkpoint` in pipeline/train.py builds it); with the state's MB.

    Before `pipeline.background_save` that is `write(staging) -> records` for `CheckpointStore.save`; with it,
    `queue_files(staging, writer)` for `CheckpointSaves.save`."""
    import torch

    from pipeline.checkpoint import save_state
    from pipeline.config import config_to_dict
    from pipeline.dist import DistInfo
    from pipeline.engine import build_engine
    from pipeline.models import build_model
    from pipeline.runtime import rng_state
    from pipeline.schedule import LRSchedule

    cfg, _ = load_tolerant(config, ["run.device=cpu"])
    info, device = DistInfo(), torch.device("cpu")
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, 5004, cfg.data.batch_size)  # ImageNet's steps per epoch
    engine = build_engine(cfg.engine, build_model(cfg.model), cfg.optim, schedule.lr(0), info, device, 2)
    engine.train_step(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))  # creates SGD's momentum buffers
    tensors = list(engine.module.state_dict().values()) + [
        t for s in engine.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    state_mb = sum(t.numel() * t.element_size() for t in tensors) / 1e6
    config_dict = config_to_dict(cfg)
    background = _background_save_api() is not None

    def write_for(step: int) -> Callable:
        # What `Loader.state_dict()` holds (a few numbers): the rank's file is small beside the engine's.
        rank_state = {"loader": {"version": 1, "backend": "dali", "epoch": 0, "step": step, "rank": 0,
                                 "world_size": 1, "seed": 0, "backend_state": None},
                      "rng": rng_state(), "world_size": 1}
        extra = {"progress": {"step": step, "epoch": 0, "elapsed_s": 0.0}, "schedule": schedule.state_dict(),
                 "config": config_dict, "rng": rng_state()}

        def write(staging: Path) -> dict:
            files = engine.save(staging, extra, True)
            return {**files, "rank-00000.pt": save_state(staging / "rank-00000.pt", rank_state)}

        def queue_files(staging: Path, writer) -> None:
            engine.save(staging, extra, True, writer)
            writer.submit("rank-00000.pt", rank_state)
        return queue_files if background else write
    return engine, write_for, state_mb


def _background_save_api():
    """The trainer's background-save module (`pipeline.background_save`), or None at a commit without one."""
    import importlib

    try:
        return importlib.import_module("pipeline.background_save")
    except ModuleNotFoundError:
        return None


def save_synchronously(store, step: int, write) -> None:
    """One save as the trainer makes a stop's or the last one: the loop waits until it is complete."""
    api = _background_save_api()
    if api is None:
        store.save(step, True, write)
    else:
        saves = api.CheckpointSaves(store, True)
        saves.save(step, write, background=False)
        saves.close()


def measure_background_save(engine, write_for: Callable[[int], Callable], tmp: Path,
                            repeats: int) -> Optional[dict]:
    """Seconds the loop is blocked by one periodic save (written in the background), and seconds until that save
    is complete (`CheckpointSaves.finish`, which the trainer calls at its next check once the writes are done).

    None at a commit without `pipeline.background_save`."""
    api = _background_save_api()
    if api is None:
        print("background: not available at this commit", flush=True)
        return None
    from pipeline.checkpoint import CheckpointStore

    store = CheckpointStore(tmp / "background")
    saves = api.CheckpointSaves(store, True)
    blocking, complete = [], []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        saves.save(step, write_for(step), background=True)
        blocking.append(time.perf_counter() - start)
        while saves.writing:
            time.sleep(0.005)
        saves.finish()
        complete.append(time.perf_counter() - start)
    saves.close()
    return {"blocking_s": blocking, "complete_s": complete}


def checkpoint_blocking(args: argparse.Namespace, work: Path) -> Lines:
    import gc

    from pipeline.checkpoint import CheckpointStore

    rows, background_rows = [], []
    for name, config in IMAGENET_CONFIGS.items():
        engine, write_for, state_mb = _engine_and_write(config)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            store = CheckpointStore(Path(tmp) / "checkpoints")  # the trainer's defaults: keep 2 and the best
            seconds = []
            for step in range(1, args.repeats + 1):
                write = write_for(step)
                start = time.perf_counter()
                save_synchronously(store, step, write)
                seconds.append(time.perf_counter() - start)
            latest = store.latest()
            files_mb = sum(p.stat().st_size for p in latest.path.rglob("*") if p.is_file()) / 1e6
            background = measure_background_save(engine, write_for, Path(tmp), args.repeats)
        rows.append([name, f"{state_mb:.0f}", f"{files_mb:.0f}", ", ".join(f"{s:.2f}" for s in seconds),
                     f"{median(seconds):.2f}", f"{files_mb / median(seconds):.0f}"])
        if background is not None:
            background_rows.append([name, f"{median(background['blocking_s']):.2f}",
                                    f"{median(background['complete_s']):.2f}"])
        del engine, write_for
        gc.collect()
    disk = subprocess.run(["df", "-h", "--output=source,fstype", args.tmp], capture_output=True, text=True).stdout
    lines = ["### 3. Seconds the training loop is blocked by one checkpoint save", "",
             "The real nets (configs/imagenet/resnet50.yaml and resnet152.yaml: `pipeline.models` built by "
             "`build_engine`, DDP engine, world of 1, CPU) after one SGD step, so the state is what a run saves: "
             "weights, BN buffers and SGD momentum (\"state MB\", fp32). Synchronous save as the trainer does it: "
             "`CheckpointStore.save(step, True, write)` with `write` built as `save_checkpoint` in "
             "pipeline/train.py (the engine's `state.pt` with progress, schedule, config and RNG, plus the rank's "
             "file), each file serialised, sha256-hashed, written, fsynced and renamed, then the COMPLETE marker "
             "and the rotation (keep 2). "
             f"{args.repeats} saves each (steps 1..{args.repeats}), the median reported, into a temporary directory "
             f"in {args.tmp} ({' '.join(disk.split()[2:4]) or 'unknown device'}).", ""]
    lines += table(["net", "state MB", "checkpoint MB", "blocking seconds, each save", "median", "MB/s"], rows)
    lines += [""]
    if background_rows:
        lines += table(["net", "background: blocking seconds (median)", "until complete (median)"], background_rows)
    else:
        lines += ["background: not available at this commit (no `pipeline.background_save`)."]
    return lines


# -- 4. DeepSpeed against DDP ------------------------------------------------------------------------------

def engine_step_times(args: argparse.Namespace, work: Path) -> Lines:
    from train_throughput import measure  # `launch local` runs, read back from metrics.jsonl

    shards = digits(work)
    out = work / "engine-runs"
    batch = 2 * args.engine_batch  # global: 2 ranks
    per_step: Dict[str, List[float]] = {e: [] for e in ENGINES}
    rounds: Dict[str, List[float]] = {e: [] for e in ENGINES}
    for r in range(args.rounds):
        for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:  # ABBA: a drift in the machine's load cancels
            name = f"{engine}-{r}"
            try:
                measure("synthetic", shards, out, args.engine_model, args.engine_steps, 2, batch,
                        extra=[f"engine.name={engine}"], name=name)
            except subprocess.CalledProcessError as e:
                raise RuntimeError(f"{engine} run failed: {(e.stderr or b'').decode(errors='replace')[-3000:]}") from e
            records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
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


# -- main --------------------------------------------------------------------------------------------------

SECTIONS: Dict[str, Callable[[argparse.Namespace, Path], Lines]] = {
    "syncs": host_syncs, "startup": startup_reads, "checkpoint": checkpoint_blocking, "engines": engine_step_times}


def main(argv: Optional[Sequence[str]] = None) -> int:
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

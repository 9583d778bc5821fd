"""Section `startup`: what each rank reads to open its data, for 16 and 1,024 shards."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from overheads.common import (
    IMAGENET_CONFIGS,
    IMAGENET_TRAIN,
    IMAGENET_VAL,
    REPO,
    Lines,
    child_env,
    free_port,
    load_tolerant,
    table,
)

ENTRY = Path(__file__).resolve().parents[1] / "scale_overheads.py"  # its --startup-child runs one rank


def make_sparse_dataset(root: Path, shards: int, per_shard: dict[str, int], image_bytes: int) -> Path:
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


def _proc_io() -> dict[str, int]:
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
    opened: list[str] = []
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


def run_ranks(root: Path, world: int, timeout: int = 900) -> list[dict]:
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(ENTRY), "--startup-child", str(root)], cwd=REPO, text=True,
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


"""Sharding throughput (images/s, MB/s) beside plain `tar` of the same files - the copy limit.

With no arguments it builds its own ILSVRC-2012-format tree with `data_prep synth` (real photos, ImageNet-
sized JPEGs), warms the page cache, then times, alternately and best of --repeats:
  tar:   `tar cf` of the same train/ and val/ trees (one process; reads, writes, no checks),
  prep:  `data_prep imagenet` (in-process) without re-encoding (listing, validation, quirk repair, shuffle, tar
         shards, DALI index, sha256, fsync, sampled pixel statistics, manifest), --workers processes.
each with the files evicted from the page cache first (cold: read from storage, as when sharding a set that
does not fit in RAM) and with them cached (warm: the in-memory copy limit, which a Python writer cannot reach).

Two sets of the same tree are timed:
  fixture:        the synth photos as `data_prep synth` writes them (smooth crops: ~23 KB average, so
                  per-file costs weigh about 5x more than on ImageNet),
  ImageNet-sized: the same tree with every ordinary photo re-saved at long side 500 px (500x375-ish),
                  JPEG quality 95, with mild grain (sigma 12 luma noise) so that the average file is
                  ~110 KB like ILSVRC-2012's train set; the planted quirk files are kept as they are.
Prints a table per set, each set's cold-cache ratio and, last, `prep/tar speed ratio: X` - the smaller
(worse) of the two cold-cache ratios (prep MB/s over tar MB/s). --sets picks the sets.

  .venv/bin/python benchmarks/prep_throughput.py [--classes 8] [--per-class 100] [--workers N]
                                                 [--sets fixture,imagenet-sized]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.images import Encoding  # noqa: E402
from data_prep.prepare import (  # noqa: E402
    DEFAULT_STATS,  # noqa: E402
    Options,
    prepare,
)
from data_prep.sources.imagenet import load_imagenet  # noqa: E402
from data_prep.synth import synth_imagenet  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def tree_bytes(root: Path) -> tuple:
    files = [p for d in ("train", "val") for p in (root / d).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def warm(root: Path) -> None:
    for d in ("train", "val"):
        for p in (root / d).rglob("*"):
            if p.is_file():
                p.read_bytes()


def drop_cache(root: Path) -> None:
    """Evict the tree's files from the page cache (POSIX_FADV_DONTNEED; no privileges needed): a cold read."""
    os.sync()  # dirty pages (a freshly synthesised tree) cannot be evicted until written back
    for d in ("train", "val"):
        for p in (root / d).rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)


def time_tar(src: Path, work: Path, cold: bool) -> float:
    out = work / "plain.tar"
    drop_cache(src) if cold else warm(src)
    start = time.perf_counter()
    subprocess.run(["tar", "cf", str(out), "-C", str(src), "train", "val"], check=True)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def time_prep(src: Path, work: Path, workers: int, cold: bool, stats_images: int) -> float:
    out = work / "shards"
    drop_cache(src) if cold else warm(src)
    start = time.perf_counter()
    source = load_imagenet(src)
    prepare(source, out, Options(shard_size_mb=16, encoding=Encoding(), workers=workers, fsync=True,
                                 progress=False, stats_images=stats_images))
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return elapsed


def imagenet_sized(src: Path, dst: Path, seed: int = 0) -> None:
    """Copy the tree `src` to `dst`, re-saving each ordinary photo ImageNet-sized (see the module doc)."""
    import json

    import numpy as np
    from PIL import Image

    quirks = json.loads((src / "synth_quirks.json").read_text())
    planted = {q["path"] for group in quirks.values() for q in group}
    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    for d in ("train", "val"):
        for p in sorted((dst / d).rglob("*")):
            if not p.is_file() or str(p.relative_to(dst)) in planted:
                continue
            with Image.open(p) as img:
                img = img.convert("RGB")
            scale = 500 / max(img.size)
            img = img.resize((max(8, round(img.size[0] * scale)), max(8, round(img.size[1] * scale))),
                             Image.BICUBIC)
            noise = rng.normal(0, 12, (img.size[1], img.size[0], 1)).astype(np.int16)
            img = Image.fromarray((np.asarray(img).astype(np.int16) + noise).clip(0, 255).astype(np.uint8))
            img.save(p, format="JPEG", quality=95)


def measure(src: Path, work: Path, workers: int, repeats: int) -> tuple:
    """(files, bytes, {method: best seconds}) for one tree; prints its table."""
    n, nbytes = tree_bytes(src)
    # The statistics sample is a fixed count (default 1000); on ImageNet's 1.28M images that is 0.08%.
    # Decode the same fraction here, or a small benchmark set would be all statistics.
    stats_images = max(1, round(n * DEFAULT_STATS / IMAGENET_TRAIN))
    results = {"tar (cold cache)": [], "prep (cold cache)": [], "tar (warm cache)": [], "prep (warm cache)": []}
    for _ in range(repeats):
        for cold in (True, False):
            results[f"tar ({'cold' if cold else 'warm'} cache)"].append(time_tar(src, work, cold))
            results[f"prep ({'cold' if cold else 'warm'} cache)"].append(
                time_prep(src, work, workers, cold, stats_images))
    print(f"files: {n}, {nbytes / 1e6:.1f} MB (avg {nbytes / n / 1e3:.0f} KB); workers: {workers}; "
          f"cpus: {os.cpu_count()}; stats images: {stats_images}; best of {repeats}")
    print(f"| {'method':<17} | {'seconds':>8} | {'images/s':>9} | {'MB/s':>8} |")
    print(f"|{'-' * 19}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    best = {k: min(v) for k, v in results.items()}
    for k, s in best.items():
        print(f"| {k:<17} | {s:8.3f} | {n / s:9.0f} | {nbytes / s / 1e6:8.1f} |")
    return n, nbytes, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sets", default="fixture,imagenet-sized",
                    help="comma-separated: fixture (synth files as written), imagenet-sized (~110 KB files)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="prep_bench_"))
    src = work / "src"
    if not src.is_dir():
        t = time.perf_counter()
        # Long side 300-500 px like ImageNet's, but the smooth synth crops compress to ~23 KB on average.
        synth_imagenet(src, args.classes, args.per_class, val_per_class=max(1, args.per_class // 10),
                       long_side=(300, 500))
        print(f"synth: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    sets = [x.strip() for x in args.sets.split(",") if x.strip()]
    unknown = set(sets) - {"fixture", "imagenet-sized"}
    if unknown or not sets:
        ap.error(f"--sets: unknown {sorted(unknown)}; choose from fixture, imagenet-sized")
    ratios = {}
    for name in sets:
        tree = src
        if name == "imagenet-sized":
            tree = work / "src_imagenet_sized"
            if not tree.is_dir():
                t = time.perf_counter()
                imagenet_sized(src, tree)
                print(f"imagenet-sized copy: {time.perf_counter() - t:.1f} s", file=sys.stderr)
        print(f"\n## {name} set")
        n, nbytes, best = measure(tree, work, args.workers, args.repeats)
        ratios[name] = (nbytes / n, best["tar (cold cache)"] / best["prep (cold cache)"],
                        best["tar (warm cache)"] / best["prep (warm cache)"])
    if args.work is None:
        shutil.rmtree(work)
    print()
    for name, (avg, cold, warm_ratio) in ratios.items():
        print(f"{name} set (avg {avg / 1e3:.0f} KB): prep/tar cold-cache ratio {cold:.2f}, "
              f"warm-cache ratio {warm_ratio:.2f}")
    # The headline: files read from storage, as when sharding a dataset that does not sit in RAM; the
    # worse of the sets timed.
    print(f"prep/tar speed ratio: {min(r[1] for r in ratios.values()):.2f}")


if __name__ == "__main__":
    main()

"""Sharding throughput (images/s, MB/s) beside plain `tar` of the same files - the copy limit.

With no arguments it builds its own ILSVRC-2012-format tree with `data_prep synth` (real photos, ImageNet-
sized JPEGs), warms the page cache, then times, alternately and best of --repeats:
  tar:   `tar cf` of the same train/ and val/ trees (one process; reads, writes, no checks),
  prep:  `data_prep imagenet` (in-process) without re-encoding (listing, validation, quirk repair, shuffle, tar
         shards, DALI index, sha256, fsync, sampled pixel statistics, manifest), --workers processes.
each with the files evicted from the page cache first (cold: read from storage, as when sharding a set that
does not fit in RAM) and with them cached (warm: the in-memory copy limit, which a Python writer cannot reach).
Prints a table and, last, `prep/tar speed ratio: X` (cold cache; prep MB/s over tar MB/s).

  .venv/bin/python benchmarks/prep_throughput.py [--classes 8] [--per-class 100] [--workers N]
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
from data_prep.prepare import DEFAULT_STATS  # noqa: E402
from data_prep.prepare import Options, prepare  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="prep_bench_"))
    src = work / "src"
    if not src.is_dir():
        t = time.perf_counter()
        # ImageNet-like sizes: long side 300-500 px, ~110 KB average JPEG in the real set.
        synth_imagenet(src, args.classes, args.per_class, val_per_class=max(1, args.per_class // 10),
                       long_side=(300, 500))
        print(f"synth: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    n, nbytes = tree_bytes(src)
    # The statistics sample is a fixed count (default 1000); on ImageNet's 1.28M images that is 0.08%.
    # Decode the same fraction here, or a small benchmark set would be all statistics.
    stats_images = max(1, round(n * DEFAULT_STATS / IMAGENET_TRAIN))
    results = {"tar (cold cache)": [], "prep (cold cache)": [], "tar (warm cache)": [], "prep (warm cache)": []}
    for _ in range(args.repeats):
        for cold in (True, False):
            results[f"tar ({'cold' if cold else 'warm'} cache)"].append(time_tar(src, work, cold))
            results[f"prep ({'cold' if cold else 'warm'} cache)"].append(
                time_prep(src, work, args.workers, cold, stats_images))
    print(f"files: {n}, {nbytes / 1e6:.1f} MB (avg {nbytes / n / 1e3:.0f} KB); workers: {args.workers}; "
          f"cpus: {os.cpu_count()}; stats images: {stats_images}; best of {args.repeats}")
    print(f"| {'method':<16} | {'seconds':>8} | {'images/s':>9} | {'MB/s':>8} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    best = {k: min(v) for k, v in results.items()}
    for k, s in best.items():
        print(f"| {k:<16} | {s:8.3f} | {n / s:9.0f} | {nbytes / s / 1e6:8.1f} |")
    if args.work is None:
        shutil.rmtree(work)
    print(f"warm-cache prep/tar ratio: {best['tar (warm cache)'] / best['prep (warm cache)']:.2f}")
    # The headline: files read from storage, as when sharding a dataset that does not sit in RAM.
    print(f"prep/tar speed ratio: {best['tar (cold cache)'] / best['prep (cold cache)']:.2f}")


if __name__ == "__main__":
    main()

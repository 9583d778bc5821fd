"""Plan shards for a listed source, write this task's share in parallel, and merge when all are done.

Planning is a pure function of the listing, the seed and the options, so every task of a SLURM array
computes the same plan and writes a disjoint, deterministic part of it (shard i goes to task i mod K).
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import numpy as np
from tqdm import tqdm

from . import __version__
from .durable import write_file
from .images import Encoding
from .lock import OutputLock
from .merge import merge, missing_records, refuse_unknown_manifest
from .shards import PARTS_DIR, Item, ShardTask, fingerprint, write_shard
from .sources import SourceData

DEFAULT_SHARD_MB = 512.0
DEFAULT_STATS = 1000  # images decoded for the pixel mean/std and the mean image of file sources


@dataclass(frozen=True)
class Options:
    """How to shard: size target (MB of input) or samples per shard or a shard count; seed; parallelism."""

    seed: int = 0
    shard_size_mb: float | None = None
    samples_per_shard: int | None = None
    num_shards: int | None = None
    encoding: Encoding = Encoding()
    workers: int = 1
    num_tasks: int = 1
    task_id: int = 0
    stats_images: int = DEFAULT_STATS
    fsync: bool = True
    progress: bool = True


def _groups(items: list[Item], opts: Options) -> list[range]:
    """Split positions 0..n-1 into consecutive shards by count, by shard number or by input bytes."""
    n = len(items)
    if opts.samples_per_shard:
        per = opts.samples_per_shard
        return [range(s, min(s + per, n)) for s in range(0, n, per)]
    if opts.num_shards:
        k = min(opts.num_shards, max(n, 1))
        return [range(n * i // k, n * (i + 1) // k) for i in range(k)]
    target = (opts.shard_size_mb or DEFAULT_SHARD_MB) * 1e6
    groups, start, size = [], 0, 0
    for i, it in enumerate(items):
        if size and size + it.size > target:
            groups.append(range(start, i))
            start, size = i, 0
        size += it.size
    groups.append(range(start, n))
    return groups


def _stats_every(source: SourceData, opts: Options) -> int:
    """The statistics sample of a file source: the train images at positions (keys) divisible by this
    (0: none - exact statistics, or `--stats-images 0`)."""
    if source.exact_stats is not None or opts.stats_images <= 0:
        return 0
    return max(1, math.ceil(len(source.splits.get("train", [])) / opts.stats_images))


def plan(source: SourceData, out: Path, opts: Options) -> list[ShardTask]:
    """Every shard of every split: samples shuffled once (per split, from the seed), keyed, grouped."""
    tasks = []
    for split, items in source.splits.items():
        # Class-sorted listings must not give class-sorted shards: one seeded shuffle before grouping.
        rng = np.random.default_rng([opts.seed, zlib.crc32(split.encode())])
        shuffled = [items[i] for i in rng.permutation(len(items))]
        keys = [f"{split}_{i:010d}" for i in range(len(shuffled))]
        every = _stats_every(source, opts) if split == "train" else 0
        for number, g in enumerate(_groups(shuffled, opts)):
            its, ks = shuffled[g.start:g.stop], keys[g.start:g.stop]
            stats = [p - g.start for p in g if every and p % every == 0]
            tasks.append(ShardTask(str(out), split, number, ks, its, source.image_ext, opts.encoding, stats,
                                   fingerprint(its, ks, source.image_ext, opts.encoding), opts.fsync))
    return tasks


def _plan_record(source: SourceData, tasks: list[ShardTask], opts: Options) -> dict:
    splits = {s: {"found": len(items), "shards": [t.name for t in tasks if t.split == s]}
              for s, items in source.splits.items()}
    stats: dict = {"split": "train", "exact": source.exact_stats is not None}
    if source.exact_stats is not None:
        stats.update(mean=source.exact_stats[0], std=source.exact_stats[1], mean_image="mean_image.npy")
    else:  # merge averages the centre views of this sample into the mean image
        stats["every"] = _stats_every(source, opts)
    return {"dataset": source.dataset, "image_ext": source.image_ext, "classes": source.classes,
            "encoding": {"reencoded": opts.encoding.reencode, "max_side": opts.encoding.max_side,
                         "quality": opts.encoding.quality, "max_pixels": opts.encoding.max_pixels},
            "splits": splits, "stats": stats, "seed": opts.seed, "created_by": f"data_prep {__version__}",
            "warnings": source.warnings}


_QUEUE = None


def _init_worker(queue) -> None:
    global _QUEUE
    _QUEUE = queue


def _work(task: ShardTask) -> dict:
    try:
        return write_shard(task, lambda n, b: _QUEUE.put((n, b)))
    finally:
        _QUEUE.put(None)  # this task is over (done or failed): after its progress messages, same pipe


class _Progress:
    """tqdm bar on stderr: images/s (the bar's own rate) and, in the postfix, MB/s of input read, both over the
    time since the start.

    One rate of images, the bar's: a postfix that computed its own beside it (refreshed every 0.5 s, against
    tqdm's moving average) disagreed with it ten-fold, stale from the first images of a start that forked the
    writers. smoothing=0 makes the bar's rate images done over the time since its start, the basis of the MB/s.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, smoothing=0)
        self.bytes = 0

    def __call__(self, images: int, nbytes: int) -> None:
        self.bytes += nbytes
        if not self.bar.disable:
            elapsed = max(time.time() - self.bar.start_t, 1e-9)  # tqdm times its bar with time.time
            # Before the update, without a refresh of its own: the bar shows it with the count it belongs to.
            self.bar.set_postfix_str(f"{self.bytes / elapsed / 1e6:.1f} MB/s", refresh=False)
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()


def _run(tasks: list[ShardTask], workers: int, progress: _Progress,
         heartbeat: Callable[[], None] = lambda: None) -> None:
    """Write `tasks` (in `workers` processes), reporting progress and calling `heartbeat` at least every
    second or so while the work goes on (it keeps the output lock's heartbeat fresh)."""
    if workers <= 1 or len(tasks) <= 1:
        def report(images: int, nbytes: int) -> None:
            heartbeat()
            progress(images, nbytes)

        for t in tasks:
            write_shard(t, report)
        return
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    queue = ctx.Queue()
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(queue,)) as pool:
        results = [pool.apply_async(_work, (t,)) for t in tasks]
        # Block on the queue (no polling interval to wait out at the end): progress messages, then one
        # None per finished task.
        finished = 0
        while finished < len(tasks):
            heartbeat()
            try:
                msg = queue.get(timeout=1.0)
            except Empty:
                if all(r.ready() for r in results):
                    break
                continue
            if msg is None:
                finished += 1
            else:
                progress(*msg)
        for r in results:
            r.get()  # re-raises a worker's exception


def prepare(source: SourceData, out: str | Path, opts: Options) -> Path | None:
    """Write this task's shards of `source` into `out`; merge into manifest.json once every task is done.

    Holds this task's lock on `out` throughout (see lock.py): a second run of the same task refuses.
    Returns the manifest path, or None when other tasks still have shards to write."""
    out = Path(out)
    if not 0 <= opts.task_id < opts.num_tasks:
        raise ValueError(f"--task-id {opts.task_id} must be in 0..{opts.num_tasks - 1}")
    refuse_unknown_manifest(out)  # before anything is written into a dataset of another data_prep version
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    with OutputLock(out, opts.task_id, opts.num_tasks) as lock:
        return _prepare_locked(source, out, opts, lock)


def _prepare_locked(source: SourceData, out: Path, opts: Options, lock: OutputLock) -> Path | None:
    """The work of `prepare` once the lock is held: plan, write this task's shards, merge if last."""
    tasks = plan(source, out, opts)
    record = _plan_record(source, tasks, opts)
    plan_path = out / PARTS_DIR / "plan.json"
    # Every task writes the same plan; a different existing plan means a different input or options.
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
        if old != record:
            print(f"note: {plan_path} differs from this run's plan (new input or options): shards whose "
                  f"inputs changed are rewritten", file=sys.stderr)
    write_file(plan_path, json.dumps(record, indent=1).encode())
    if source.exact_stats is not None:
        buf = io.BytesIO()
        np.save(buf, source.exact_stats[2].astype(np.float32))
        write_file(out / "mean_image.npy", buf.getvalue())
    mine = [t for i, t in enumerate(tasks) if i % opts.num_tasks == opts.task_id]
    progress = _Progress(sum(len(t.items) for t in mine), opts.progress)
    try:
        _run(mine, opts.workers, progress, lock.beat)
    finally:
        progress.close()
    if missing_records(out):
        return None
    return merge(out)

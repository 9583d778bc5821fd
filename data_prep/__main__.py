"""Command line: `python -m data_prep {imagenet,cifar10,cifar100,folder,verify,merge,synth} ...`.

Examples:
  python -m data_prep imagenet --src /data/ILSVRC2012 --out /data/imagenet-wds --workers 16
  python -m data_prep cifar10 --src /data/cifar-10-batches-py --out /data/cifar10-wds --val-size 5000
  python -m data_prep imagenet --src ... --out ... --num-tasks 8 --task-id $SLURM_ARRAY_TASK_ID
  python -m data_prep merge /data/imagenet-wds        # after all array tasks (the last task also merges)
  python -m data_prep verify /data/imagenet-wds
  python -m data_prep synth --kind imagenet --out /tmp/fake-ilsvrc --classes 4 --per-class 6
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

from . import synth
from .images import (
    DEFAULT_MAX_PIXELS,  # a constant; images.py imports PIL only when it decodes
    Encoding,
)
from .manifest import load_manifest
from .merge import WARNINGS_NAME, merge
from .prepare import Options, prepare
from .sources.cifar import load_cifar
from .sources.folder import load_folder
from .sources.imagenet import load_imagenet
from .verify import verify

SOURCES = ("imagenet", "cifar10", "cifar100", "folder")
SYNTH_KINDS = ("imagenet", "imagenet-kaggle", "cifar10", "cifar100")


def _add_prepare(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description=help_,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", required=True, type=Path, help="the raw dataset directory")
    p.add_argument("--out", required=True, type=Path, help="output directory for shards and manifest.json")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (and the CIFAR val split's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-size-mb", type=float, default=None,
                      help="target shard size in MB of input (default 512 when no other size is given)")
    size.add_argument("--samples-per-shard", type=int, default=None, help="samples per shard")
    size.add_argument("--num-shards", type=int, default=None, help="number of shards per split")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel shard writers")
    p.add_argument("--num-tasks", type=int, default=1, help="split the shards over K independent tasks (SLURM array)")
    p.add_argument("--task-id", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)),
                   help="this task's id in 0..K-1 (default: $SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync each shard before its rename")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if name in ("imagenet", "folder"):
        p.add_argument("--max-side", type=int, default=None, help="re-encode: shrink so the longer side <= this")
        p.add_argument("--quality", type=int, default=None,
                       help="re-encode: JPEG quality (default 90 when re-encoding)")
        p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help="images with more pixels (width x height) are shrunk to fit, aspect kept, re-encoded "
                            "as JPEG and listed in converted.jsonl (the default is well above ILSVRC-2012's largest "
                            "photos); 0: no limit of our own - images PIL refuses as decompression bombs "
                            "(~179 MP) are still rejected and listed in rejected.jsonl")
        p.add_argument("--stats-images", type=int, default=1000,
                       help="train images (a deterministic sample) the pixel mean/std are computed from")
    if name == "imagenet":
        p.add_argument("--devkit", type=Path, default=None,
                       help="directory holding ILSVRC2012_validation_ground_truth.txt and meta.mat "
                            "(default: searched under --src)")
    if name.startswith("cifar"):
        p.add_argument("--val-size", type=int, default=0,
                       help="hold out this many training images as a val split (the paper: 5000)")
    if name == "cifar100":
        p.add_argument("--labels", choices=("fine", "coarse"), default="fine",
                       help="the 100 fine classes, or the 20 coarse superclasses (default: fine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub, "imagenet", "shard ILSVRC-2012 (official, Kaggle or val-in-folders layout)")
    _add_prepare(sub, "cifar10", "shard the CIFAR-10 python batches")
    _add_prepare(sub, "cifar100", "shard the CIFAR-100 python batches")
    _add_prepare(sub, "folder", "shard a class-per-folder image tree")
    v = sub.add_parser("verify", help="re-read every shard: sha256, counts, index, decodability")
    v.add_argument("dir", type=Path)
    v.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    m = sub.add_parser("merge", help="write manifest.json once every task of a --num-tasks run is done")
    m.add_argument("dir", type=Path)
    s = sub.add_parser("synth", help="write real-format fixtures from scikit-image/scikit-learn data",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--kind", required=True, choices=SYNTH_KINDS)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--classes", type=int, default=4, help="ImageNet kinds: number of classes")
    s.add_argument("--per-class", type=int, default=None,
                   help="ImageNet kinds: train images per class (default 6); CIFAR kinds: cap per class")
    s.add_argument("--val-per-class", type=int, default=2, help="ImageNet kinds: val images per class")
    s.add_argument("--long-side", type=int, nargs=2, default=(160, 400), metavar=("MIN", "MAX"),
                   help="ImageNet kinds: each image's longer side is drawn from [MIN, MAX) pixels; ImageNet's "
                        "own images average about 470x390 (use 400 501 for throughput measurements)")
    s.add_argument("--seed", type=int, default=0)
    return parser


def _prepare(args: argparse.Namespace) -> int:
    if args.command == "imagenet":
        source = load_imagenet(args.src, args.devkit)
    elif args.command == "folder":
        source = load_folder(args.src)
    else:
        source = load_cifar(args.src, args.command, args.val_size, args.seed, getattr(args, "labels", "fine"))
    if getattr(args, "max_pixels", 0) < 0:
        raise ValueError(f"--max-pixels {args.max_pixels}: must be >= 0 (0: no limit)")
    encoding = Encoding(getattr(args, "max_side", None), getattr(args, "quality", None),
                        getattr(args, "max_pixels", DEFAULT_MAX_PIXELS))
    opts = Options(seed=args.seed, shard_size_mb=args.shard_size_mb, samples_per_shard=args.samples_per_shard,
                   num_shards=args.num_shards, encoding=encoding, workers=args.workers, num_tasks=args.num_tasks,
                   task_id=args.task_id, stats_images=getattr(args, "stats_images", 0),
                   fsync=not args.no_fsync, progress=not args.no_progress)
    found = {s: len(v) for s, v in source.splits.items()}
    print(f"{source.dataset}: {len(source.classes)} classes, found {found} ({'; '.join(source.notes)})",
          file=sys.stderr)
    for w in source.warnings:
        print(f"warning: {w['warning']}", file=sys.stderr)
    manifest = prepare(source, args.out, opts)
    if manifest is None:
        print(f"task {args.task_id}/{args.num_tasks} done; the manifest is written when every task is done "
              f"(or run: python -m data_prep merge {args.out})", file=sys.stderr)
        return 0
    _summary(manifest)
    return 0


def _summary(path: Path) -> None:
    m = load_manifest(path)
    for s in m.splits.values():
        print(f"{s.name}: {s.num_samples} written, {s.rejected} rejected of {s.found} found, "
              f"{len(s.shards)} shards", file=sys.stderr)
    if any(s.rejected for s in m.splits.values()):
        print(f"rejected files and reasons: {m.root / 'rejected.jsonl'}", file=sys.stderr)
    warnings = m.root / WARNINGS_NAME
    if warnings.is_file() and warnings.stat().st_size:
        print(f"warnings (e.g. empty class folders): {warnings}", file=sys.stderr)
    print(f"manifest: {path}")


def _synth(args: argparse.Namespace) -> int:
    if args.kind.startswith("imagenet"):
        quirks = synth.synth_imagenet(args.out, args.classes, args.per_class or 6, args.val_per_class,
                                      kaggle=args.kind == "imagenet-kaggle", seed=args.seed,
                                      long_side=tuple(args.long_side))
        print(f"{args.out}: ILSVRC-2012 {args.kind} tree; planted quirks in {args.out / 'synth_quirks.json'} "
              f"({len(quirks['converted'])} to convert, {len(quirks['rejected'])} to reject)")
    else:
        d = synth.synth_cifar(args.out, args.kind, args.per_class, args.seed)
        print(f"{d}: {args.kind} python batches")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in SOURCES:
            return _prepare(args)
        if args.command == "verify":
            problems = verify(args.dir, decode=not args.no_decode)
            for p in problems:
                print(p, file=sys.stderr)
            print("OK" if not problems else f"{len(problems)} bad shard(s)")
            return 1 if problems else 0
        if args.command == "merge":
            _summary(merge(args.dir))
            return 0
        return _synth(args)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:  # bad input: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Loader throughput: images/s of each backend at the paper's augmentation, beside the decode-only ceiling.

    python benchmarks/loader_throughput.py [--images 384] [--threads N] [--source data_prep|fixture] [--out FILE]

Builds its own synthetic-ImageNet shards (`python -m data_prep synth --kind imagenet` then
`python -m data_prep imagenet`; with `--source fixture`, or without data_prep, the test suite's
contract-following writer at ImageNet-like sizes),
then times on the same images and the same number of threads:
  decode-only (DALI)   reader + full CPU decode, nothing else - the ceiling for the DALI pipeline;
  decode-only (PIL)    DataLoader workers doing a full PIL decode - the ceiling for the torch backend;
  dali / torch         `build_loader` at augmentation=paper, finished batches (float NCHW) included;
  synthetic            the synthetic backend (no data path at all).
With a GPU and DALI present it adds DALI's mixed (nvJPEG / hardware decoder) decode-only and paper rates,
the latter both ways: the window alone decoded (the default) and whole images decoded, cropped in the resize.
It ends by printing `dali/decode-only ratio: X` and `torch/decode-only ratio: Y`.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.config.schema import DataConfig  # noqa: E402
from pipeline.data import build_loader  # noqa: E402
from pipeline.data.dataset import open_split  # noqa: E402
from pipeline.dist import DistInfo  # noqa: E402

# data_prep synth's longer sides for the benchmark: ImageNet's own images average about 470x390 px, and
# the image size sets the balance between the decode (the ceiling) and the fixed 224x224 output work.
IMAGENET_LONG_SIDE = (400, 501)


def make_shards(out: Path, images: int, source: str) -> Path:
    """Synthetic-ImageNet shards: `data_prep synth` + `data_prep imagenet` when available (source "data_prep"),
    else (or with source "fixture") the tests' writer at ImageNet-like sizes (333-500 px sides)."""
    src = out.parent / "imagenet-src"
    try:
        if source != "data_prep":
            raise ImportError("fixture requested")
        import data_prep  # noqa: F401

        run = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "data_prep", "synth", "--kind", "imagenet", "--out", str(src),
                        "--classes", "8", "--per-class", str(max(1, images // 8)), "--val-per-class", "1",
                        "--long-side", *map(str, IMAGENET_LONG_SIDE)], **run)
        subprocess.run([sys.executable, "-m", "data_prep", "imagenet", "--src", str(src), "--out", str(out)], **run)
        return out
    except (ImportError, subprocess.CalledProcessError) as e:
        print(f"(shards from tests/support/loaders.py: {e})")
    from tests.support.loaders import make_dataset

    half = images // 2
    return make_dataset(out, "imagenet", {"train": [half, images - half], "test": [8]}, num_classes=8,
                        sizes=(333, 500))


def mean_image_size(root: Path) -> str:
    """The mean width x height of the train split's images (they set the decode/resize balance)."""
    from PIL import Image

    split = open_split(root, "train")
    sizes = []
    for ref in split.sample_refs()[:200]:
        with open(split.shards[ref.shard].tar, "rb") as f:
            f.seek(ref.image[0])
            sizes.append(Image.open(io.BytesIO(f.read(ref.image[1]))).size)
    w, h = np.mean(sizes, axis=0)
    return f"{w:.0f}x{h:.0f}"


def cpu_seconds() -> float:
    """CPU time of this process, its reaped children and its live ones (persistent DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == os.getpid():  # fields[1]: parent pid; [11], [12]: utime, stime in ticks
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rate(batches: Callable[[], Iterable], count: Callable[[object], int], passes: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) over `passes` full passes, after a warm-up pass (start-up costs)."""
    for _ in batches():
        pass
    n, start, cpu = 0, time.perf_counter(), cpu_seconds()
    for _ in range(passes):
        for b in batches():
            n += count(b)
    return n / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu) / n


def dali_decode_only(root: Path, threads: int, batch: int, device: str = "cpu"):
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    split = open_split(root, "train")

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if device == "gpu" else None, seed=0)
    def pipe():
        enc, _ = fn.readers.webdataset(paths=[str(s.tar) for s in split.shards],
                                       index_paths=[str(s.index) for s in split.shards],
                                       ext=[split.image_ext, split.label_ext], name="Reader", pad_last_batch=True)
        img = fn.decoders.image(enc, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        return img.shape()  # ragged images cannot leave as one tensor; decoding is what we time

    it = DALIGenericIterator([pipe()], ["shape"], reader_name="Reader", auto_reset=False,
                             last_batch_policy=LastBatchPolicy.PARTIAL)

    def one_pass():
        yield from it
        it.reset()

    return one_pass


class _PilDecode(torch.utils.data.Dataset):
    def __init__(self, root: Path) -> None:
        split = open_split(root, "train")
        self.refs, self.tars = split.sample_refs(), [str(s.tar) for s in split.shards]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        from PIL import Image

        ref = self.refs[i]
        with open(self.tars[ref.shard], "rb") as f:
            f.seek(ref.image[0])
            data = f.read(ref.image[1])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).shape[0]


def pil_decode_only(root: Path, threads: int, batch: int):
    ds = _PilDecode(root)
    return lambda: torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=threads, shuffle=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; each path's best counts")
    parser.add_argument("--data", default=None, help="an existing prepared dataset (default: build one)")
    parser.add_argument("--source", choices=("data_prep", "fixture"), default="data_prep",
                        help="who builds the shards: data_prep synth (its photos are smaller than ImageNet's) or "
                             "the tests' writer at ImageNet-like sizes")
    parser.add_argument("--out", default=None, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the finishing step runs in this process: leave the cores to the loaders

    tmp = tempfile.TemporaryDirectory(prefix="loader-bench-")
    root = Path(args.data) if args.data else make_shards(Path(tmp.name) / "imagenet", args.images, args.source)
    n = open_split(root, "train").num_samples
    cfg = dict(root=str(root), augmentation="paper", image_size=224, batch_size=args.batch,
               num_threads=args.threads, shuffle_buffer=256, pca_lighting=0.1)
    info = DistInfo()
    cpu = torch.device("cpu")
    results: dict[str, tuple[float, float]] = {}

    def loader(backend: str, device=cpu):
        lo = build_loader(DataConfig(backend=backend, **cfg), "train", info, device=device)
        return lambda: lo

    def whole_decode_loader(device):
        """The GPU pipeline's alternative: whole images decoded (hardware decoder), cropped in the resize."""
        from pipeline.data import dali_loader

        dali_loader.GPU_ROI_DECODE = False
        try:
            lo = build_loader(DataConfig(backend="dali", **cfg), "train", info, device=device)
            lo._ensure_iterator()  # builds the pipeline now, while the switch is off
        finally:
            dali_loader.GPU_ROI_DECODE = True
        return lambda: lo

    by_len = lambda b: len(b[1]) if isinstance(b, (tuple, list)) else len(b)  # noqa: E731
    dali_count = lambda b: int(b[0]["shape"].shape[0])  # noqa: E731
    try:
        import nvidia.dali  # noqa: F401

        has_dali = True
    except ImportError:
        has_dali = False
        print("(DALI not installed: no DALI figures)")
    paths = {}  # name -> (batches, count); built once, so pipelines and workers start once
    if has_dali:
        paths["decode-only (DALI, CPU)"] = (dali_decode_only(root, args.threads, args.batch), dali_count)
        paths["dali (CPU), paper"] = (loader("dali"), by_len)
    paths["decode-only (PIL workers)"] = (pil_decode_only(root, args.threads, args.batch), by_len)
    paths["torch, paper"] = (loader("torch"), by_len)
    paths["synthetic"] = (loader("synthetic"), by_len)
    if torch.cuda.is_available():
        gpu = torch.device("cuda", 0)
        paths["torch, paper, batches on GPU"] = (loader("torch", gpu), by_len)
        paths["synthetic, GPU"] = (loader("synthetic", gpu), by_len)
        if has_dali:
            paths["decode-only (DALI mixed, GPU)"] = (dali_decode_only(root, args.threads, args.batch, "gpu"),
                                                      dali_count)
            paths["dali (GPU), paper"] = (loader("dali", gpu), by_len)
            paths["dali (GPU), paper, whole-image decode"] = (whole_decode_loader(gpu), by_len)
    # Rounds interleave the paths and keep each one's best: other jobs on a shared machine only slow runs down.
    for _ in range(args.rounds):
        for name, (batches, count) in paths.items():
            speed, cpu = rate(batches, count, args.passes)
            best = results.get(name, (0.0, float("inf")))
            results[name] = (max(best[0], speed), min(best[1], cpu))

    lines = [f"{n} synthetic-ImageNet JPEGs (mean {mean_image_size(root)} px), batch {args.batch}, "
             f"{args.threads} threads/workers, "
             f"torch {torch.__version__}", "",
             "| path | images/s | images/s per thread | CPU ms per image | images/s per busy core |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {v / args.threads:.1f} | {c:.2f} | {1000 / c:.0f} |" for k, (v, c) in results.items()]
    ratios = {}
    for name, pipeline_row, ceiling_row in (("dali", "dali (CPU), paper", "decode-only (DALI, CPU)"),
                                            ("torch", "torch, paper", "decode-only (PIL workers)")):
        if pipeline_row in results:
            ratios[name] = (results[pipeline_row][0] / results[ceiling_row][0],
                            results[ceiling_row][1] / results[pipeline_row][1])
    lines += ["", "By CPU time (robust to other load on the machine): " +
              ", ".join(f"{k} {v[1]:.2f}" for k, v in ratios.items()) + " of decode-only", ""]
    lines += [f"{k}/decode-only ratio: " + (f"{ratios[k][0]:.2f}" if k in ratios else "n/a") for k in ("dali", "torch")]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

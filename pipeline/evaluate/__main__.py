"""`python -m pipeline.evaluate RUN_DIR [--protocol center|tencrop|multiscale] [--checkpoint best|last|PATH]
[data.* and eval.* overrides]`

Evaluates a trained run with one of the paper's testing protocols and records the result in the run's
`results.json` under `eval.<protocol>`: exact top-1 and top-5 error over the whole split (every sample
once, however many ranks), the sample count, the checkpoint and its step. `--layer-responses` also
records Fig. 7's per-layer response std in `layer_responses.json`. The primary rank shows its progress on
stderr (batches, images/s, ETA): a bar on a terminal, a line every tenth of the batches or 30 s otherwise.

Runs as one process, under `torchrun --nproc-per-node N`, or as a SLURM task (`python -m launch
evaluate`): rank and world size come from the environment, as for training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline import dist
from pipeline.checkpoint.store import CheckpointDamaged
from pipeline.config import ConfigError
from pipeline.config.schema import PROTOCOLS
from pipeline.dist import dist_info_from_env
from pipeline.dist.exit_codes import exit_process
from pipeline.evaluate.job import evaluate_run
from pipeline.run.layout import RunDir


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory (it holds config.yaml and checkpoints/)")
    parser.add_argument("overrides", nargs="*", help="data.* and eval.* settings for this evaluation, e.g. "
                                                     "data.eval_batch_per_gpu=50 data.root=/other/copy")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="center",
                        help="center: one 224 crop (ImageNet) or the 32x32 image (CIFAR); tencrop: Table 3's "
                             "10-crop testing; multiscale: Table 4's fully-convolutional scores averaged over "
                             "eval.scales (default: center)")
    parser.add_argument("--checkpoint", default="last",
                        help="last, best (lowest validation error), or a checkpoint directory (default: last)")
    parser.add_argument("--split", help="the split to evaluate (default: the config's data.eval_split)")
    parser.add_argument("--layer-responses", action="store_true",
                        help="also record each 3x3 layer's response std (Fig. 7) in layer_responses.json")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        record = evaluate_run(Path(args.run_dir), args.protocol, args.checkpoint, args.split, args.layer_responses,
                              overrides=args.overrides)
    except (ConfigError, FileNotFoundError, ValueError, CheckpointDamaged, dist.RankFailed) as e:
        if dist_info_from_env().is_primary:
            print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    if dist_info_from_env().is_primary:
        print(f"{record['split']} {record['protocol']} error: top-1 {record['top1_error']:.2f}%, "
              f"top-5 {record['top5_error']:.2f}% ({record['samples']} samples, step {record['step']})")
        print(f"recorded in {RunDir(args.run_dir).results}")
    return 0


if __name__ == "__main__":
    exit_process(main())

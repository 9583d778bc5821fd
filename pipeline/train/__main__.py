"""`python -m pipeline.train CONFIG [section.key=value ...]`: train one run of the paper.

Runs as one process, under `torchrun --nproc-per-node N`, or as a SLURM task: rank, world size and
master come from the environment (`pipeline.dist`). Running the same config into the same run
directory again resumes from its latest complete checkpoint: resume is the default, not a flag.

The run directory (`<run.out_dir>/<run.name>/`) holds `config.yaml`, `checkpoints/`, `metrics.jsonl`,
`results.json` (and `layer_responses.json` with `eval.layer_responses`), `wandb/`, `wandb_id`, `ranks/`
(one file per rank: where it ran, for the latest start) and, once it has finished with W&B on, `export/`: the
trained net as logged to W&B (`logging.wandb_log_model`, `pipeline.train.model_artifact`).

Each periodic training record carries `elapsed_s`, the run's training wall time over all its starts (kept in
the checkpoint), and `eta_s`, the steps left at the pace of the steps since the previous record.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import ConfigError, load_config
from pipeline.dist import dist_info_from_env, exit_codes
from pipeline.run.layout import RunDir
from pipeline.train.loop import say_error, train
from pipeline.train.outcome import Interrupted


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description="Train one run of the paper. Under torchrun or SLURM every rank runs this same command. "
        "Running it again into the same run directory resumes from the latest intact checkpoint.",
        epilog=exit_codes.describe_exit_codes(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a YAML config, e.g. configs/cifar10/resnet20.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=0.05 data.root=/data/cifar10")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # A log handler that cannot write (a full disk: W&B's own debug log) must not print a traceback per record.
    logging.raiseExceptions = False
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.USAGE
    primary = dist_info_from_env().is_primary
    try:
        outcome = train(cfg)
    except Exception as e:  # noqa: BLE001 - what a user can fix is one line; anything else keeps its traceback
        code = say_error(e, primary)
        if code == exit_codes.FAILED:
            raise
        return code
    if isinstance(outcome, Interrupted):
        return exit_codes.INTERRUPTED
    if primary:
        print(f"{outcome.split} error: {outcome.top1_error:.2f}% "
              f"(top-5 {outcome.top5_error:.2f}%, {outcome.samples} samples)")
        print(f"run directory: {RunDir.of(cfg).path.resolve()}")
    return exit_codes.OK


if __name__ == "__main__":
    exit_codes.exit_process(main())

"""What `launch` checks before it submits anything: each GPU's share of the batch (said, and warned about below the
recipe's), a dataset where the config says, and a partition that can ever run the job."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from launch.submit.partition import impossible, read_partition
from pipeline.config import ConfigError, ExperimentConfig, SlurmConfig
from pipeline.config.checks import schedule_warning, warmup_warning
from pipeline.config.per_gpu_batch import gpu_share
from pipeline.data.dataset import DatasetError, read_manifest


def print_gpu_shares(runs: dict[str, ExperimentConfig], resources: SlurmConfig) -> None:
    """What each GPU of each job gets of its run's batch, and warnings for runs spread too thin, whose schedule
    never lowers the rate or whose warm-up outlasts it (on stderr: stdout may be a dry run's sbatch script).
    `runs`: run name -> config; runs that share a batch or a warning are said once. A job without GPUs
    (`--gpus-per-node 0`) is told what each process gets."""
    by_share: dict[str, list[str]] = {}
    warnings: dict[str, list[str]] = {}
    on_gpus = resources.gpus_per_node > 0
    unit = "GPU" if on_gpus else "process"
    for name, cfg in runs.items():
        share = gpu_share(cfg, resources.gpus, on_gpus)
        by_share.setdefault(share.describe(), []).append(name)
        for warning in filter(None, (share.below_recipe(), schedule_warning(cfg.schedule),
                                     warmup_warning(cfg.schedule))):
            warnings.setdefault(warning, []).append(name)
    for text, names in by_share.items():
        print(f"per {unit}: {text}" + (f" ({len(names)} runs)" if len(runs) > 1 else ""), file=sys.stderr)
    for text, names in warnings.items():
        who = f"{names[0]}" if len(names) == 1 else f"{len(names)} runs ({', '.join(names)})"
        print(f"warning: {who}: {text}", file=sys.stderr)


def check_prepared(cfgs: Sequence[ExperimentConfig]) -> None:
    """Refuse jobs whose dataset is not there (they would fail at their start, after their wait in the queue).
    Where the data is seen by the compute nodes alone (a node-local copy), `--no-data-check` skips this."""
    for root in dict.fromkeys(cfg.data.root for cfg in cfgs if cfg.data.backend != "synthetic"):
        try:
            read_manifest(root)
        except DatasetError as e:
            raise ConfigError(f"data.root: {e}; nothing was submitted (data the compute nodes alone see: "
                              "--no-data-check)") from e


def check_startable(resources: SlurmConfig) -> None:
    """Refuse a job its partition can never run (`launch.submit.partition`), naming each resource and its limit."""
    partition = read_partition(resources.partition)
    if partition is None:
        return
    problems = impossible(partition, resources.nodes, resources.ntasks_per_node, resources.cpus_per_task,
                          resources.gpus_per_node, resources.mem_gb, resources.time_minutes)
    if problems:
        raise ConfigError("this job could never start: it asks " + "; ".join(problems) +
                          ". Nothing was submitted; ask for less (the flags named), or another --partition")

"""`python -m launch <command> ...`: run training configs and whole paper tables here or on SLURM.

  submit CONFIG [overrides] [--nodes N --gpus-per-node G --partition P --time MIN ...] [--dry-run]
  local  CONFIG [overrides] --nproc N
  sweep  configs/tables/<table>.yaml [--seeds 0 1 2] [--runs DIR] [--array-parallelism K] [resources]
  prep   --num-tasks K [resources] -- <data_prep arguments>
  evaluate RUN_DIR [data.*/eval.* overrides] [--protocol P] [--checkpoint C] [--layer-responses]
           (--nproc N | --slurm [resources] [--wait])
  reproduce configs/tables/<table>.yaml --runs DIR [--seeds ...] [resources] [--dry-run] [--local --nproc N]
  bench  --models M [M ...] [overrides] [--steps S] (--nproc N | --slurm [resources]) [--out FILE]
  plan   configs/tables/<table>.yaml [--profile FILE] [--nodes N [N ...] --gpus-per-node G] [--array-parallelism K]
         [--inter-node-bandwidth 200Gb/s ...]
  status [RUN_DIR | FOLDER | configs/tables/<table>.yaml ...] [--runs DIR]

Options and section.key=value overrides go in any order; each command's --help shows its defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from launch.cli.flags import (
    HelpFormatter,
    add_no_data_check,
    add_overrides,
    add_resource_flags,
    add_table_options,
    non_negative_int,
    positive_int,
    resource_flags,
    split_overrides,
)
from launch.plan.requests import BenchRequest, PlanRequest
from launch.plan.scaling import NODES_HELP, Cluster, add_scaling_flags
from launch.reproduce.request import ReproduceRequest, StatusRequest
from launch.submit.requests import EvaluateRequest, LocalRequest, PrepRequest, SubmitRequest, SweepRequest
from pipeline.config.schema import PROTOCOLS
from pipeline.dist.exit_codes import describe_exit_codes

TABLE_HELP = "a table config, e.g. configs/tables/table3.yaml"


def parse(argv: list[str]) -> Any:
    """The command line as the typed request of its command (options and overrides in any order)."""
    parser = _parser()
    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    if overrides and not hasattr(args, "overrides"):
        parser.error(f"`{args.command}` takes no section.key=value overrides (got {overrides[0]})")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args.request(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__,
                                     epilog="`launch local` and the training jobs end with pipeline.train's "
                                            + describe_exit_codes(),
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit a training job to SLURM through submitit")
    p.add_argument("config")
    add_overrides(p)
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script and resolved config only")
    add_no_data_check(p)
    add_resource_flags(p)
    p.set_defaults(request=lambda a: SubmitRequest(a.config, a.overrides, a.dry_run, a.no_data_check,
                                                   resource_flags(a)))

    p = sub.add_parser("local", help="run a training config on this machine in N processes",
                       description="Run a training config on this machine in N processes (ranks); its exit code is "
                                   "the ranks' (pipeline.train's).",
                       epilog=describe_exit_codes())
    p.add_argument("config")
    add_overrides(p)
    p.add_argument("--nproc", type=positive_int, default=1, help="number of processes (ranks)")
    p.set_defaults(request=lambda a: LocalRequest(a.config, a.overrides, a.nproc))

    p = sub.add_parser("sweep", help="submit every run of a paper table as one SLURM job array")
    p.add_argument("table", help=TABLE_HELP)
    add_overrides(p, "section.key=value, applied to every run")
    p.add_argument("--runs", help="directory for the runs (default: each config's run.out_dir)")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be submitted")
    add_table_options(p)
    add_resource_flags(p)
    p.set_defaults(request=lambda a: SweepRequest(a.table, a.overrides, a.seeds, a.rows, a.runs, a.array_parallelism,
                                                  a.dry_run, a.no_data_check, resource_flags(a)))

    p = sub.add_parser("prep", help="shard a dataset with a SLURM job array (data_prep --num-tasks)")
    p.add_argument("--num-tasks", type=positive_int, required=True, help="array tasks; each writes a disjoint part")
    p.add_argument("--array-parallelism", type=positive_int, default=64, help="how many array tasks run at once")
    p.add_argument("--wait", action="store_true", help="wait for every task and report the manifest")
    p.add_argument("prep_args", nargs=argparse.REMAINDER, help="-- then data_prep's own arguments")
    add_resource_flags(p)
    p.set_defaults(request=lambda a: PrepRequest(a.num_tasks, a.prep_args, a.array_parallelism, a.wait,
                                                 resource_flags(a)))

    p = sub.add_parser("evaluate", help="evaluate a run (ten-crop, multi-scale...) here or as a SLURM job")
    p.add_argument("run_dir", help="a run directory (it holds config.yaml and checkpoints/)")
    add_overrides(p, "data.* and eval.* settings for this evaluation, e.g. data.eval_batch_per_gpu=50")
    p.add_argument("--protocol", choices=PROTOCOLS, default="center")
    p.add_argument("--checkpoint", default="last", help="last, best, or a checkpoint directory")
    p.add_argument("--layer-responses", action="store_true", help="also record Fig. 7's layer responses")
    p.add_argument("--nproc", type=positive_int, default=1, help="processes on this machine (without --slurm)")
    p.add_argument("--slurm", action="store_true", help="submit a SLURM job (resources: the run's slurm section)")
    p.add_argument("--wait", action="store_true", help="with --slurm: wait for the result and print it")
    add_resource_flags(p)
    p.set_defaults(request=lambda a: EvaluateRequest(a.run_dir, a.overrides, a.protocol, a.checkpoint,
                                                     a.layer_responses, a.nproc, a.slurm, a.wait, resource_flags(a)))

    p = sub.add_parser("reproduce", help="train, evaluate and report a whole paper table with SLURM dependencies")
    p.add_argument("table", help=TABLE_HELP)
    add_overrides(p, "section.key=value, applied to every run")
    p.add_argument("--runs", required=True, help="directory for the runs; the report goes to DIR/reports")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their dependencies; submit nothing")
    add_table_options(p, array_parallelism_default=None)
    p.add_argument("--local", action="store_true", help="run the same chain here, in-process, instead of on SLURM")
    p.add_argument("--nproc", type=positive_int, default=1, help="with --local: processes (ranks) per run")
    add_resource_flags(p)
    p.set_defaults(request=lambda a: ReproduceRequest(a.table, a.runs, a.overrides, a.seeds, a.rows,
                                                      a.array_parallelism, a.dry_run, a.no_data_check, a.local,
                                                      a.nproc, resource_flags(a)))

    p = sub.add_parser("bench", help="measure each model's training images/s here and write a throughput profile")
    p.add_argument("--models", nargs="+", required=True,
                   help="model names (resnet50, cifar_resnet110, ...) or training configs")
    add_overrides(p, "section.key=value for every model, e.g. data.root=/data/imagenet")
    p.add_argument("--steps", type=positive_int, default=50, help="timed training steps per model")
    p.add_argument("--warmup-steps", type=non_negative_int, default=10,
                   help="untimed steps first (compilation, cudnn autotune)")
    p.add_argument("--nproc", type=positive_int, default=1, help="processes (GPUs) on this machine (without --slurm)")
    p.add_argument("--slurm", action="store_true", help="measure in a SLURM job with the given resources")
    p.add_argument("--out", default="throughput.json", help="the profile to write")
    add_resource_flags(p)
    p.set_defaults(request=lambda a: BenchRequest(a.models, a.overrides, a.steps, a.warmup_steps, a.nproc, a.slurm,
                                                  a.out, resource_flags(a)))

    p = sub.add_parser("plan", help="GPU-hours and wall time of a table before submitting it")
    p.add_argument("table", help=TABLE_HELP)
    add_overrides(p, "section.key=value, as given to reproduce")
    p.add_argument("--profile", help="a throughput profile from `launch bench` (default: reference figures)")
    add_table_options(p, data_check=False)
    add_resource_flags(p, node_counts_help=NODES_HELP)
    add_scaling_flags(p)
    p.set_defaults(request=lambda a: PlanRequest(a.table, a.overrides, a.profile, a.seeds, a.rows, a.array_parallelism,
                                                 a.nodes or [], Cluster.from_args(a),
                                                 resource_flags(a, skip=("nodes",))))

    p = sub.add_parser("status", help="state, progress, ETA and last metrics of runs, or of a table's runs")
    p.add_argument("paths", nargs="*", default=["runs"],
                   help="run directories, folders holding them, or table configs (their runs, and overall progress)")
    p.add_argument("--runs", help="with a table config: the directory holding its runs (as given to reproduce)")
    p.set_defaults(request=lambda a: StatusRequest(a.paths, a.runs))

    for command in sub.choices.values():
        command.formatter_class = HelpFormatter  # every command's --help shows its defaults
    return parser

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
import contextlib
import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple


# `section.key=value`: a config override, wherever it stands on the command line.
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def split_overrides(argv: List[str]) -> Tuple[List[str], List[str]]:
    """(the overrides, the other arguments): options and overrides go in any order. Left to argparse, an option
    of several values would take the overrides after it (`--seeds 0 1 data.root=...`), and overrides after an
    option (`CONFIG --nproc 2 data.root=...`) would find their positional already filled. Nothing after `--`
    (`prep`'s data_prep arguments) is an override."""
    end = argv.index("--") if "--" in argv else len(argv)
    overrides = [a for a in argv[:end] if OVERRIDE.match(a)]
    return overrides, [a for a in argv[:end] if not OVERRIDE.match(a)] + argv[end:]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; an option's default after its help, where it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) \
                and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _add_resource_flags(parser: argparse.ArgumentParser, node_counts_help: Optional[str] = None) -> None:
    group = parser.add_argument_group("SLURM resources (defaults: the config's slurm section)")
    if node_counts_help:  # `plan` compares several node counts
        group.add_argument("--nodes", type=int, nargs="+", metavar="N", help=node_counts_help)
    else:
        group.add_argument("--nodes", type=int)
    group.add_argument("--gpus-per-node", type=int, help="one task per GPU; 0 for CPU-only partitions")
    group.add_argument("--tasks-per-node", type=int, help="tasks per node where there are no GPUs")
    group.add_argument("--cpus-per-task", type=int)
    group.add_argument("--partition")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--constraint")
    group.add_argument("--mem-gb", type=int)
    group.add_argument("--time", type=int, dest="time_minutes", help="time limit in minutes")
    group.add_argument("--exclusive", action="store_true", default=None)
    group.add_argument("--max-requeues", type=int, help="how many time-outs and preemptions to survive")
    group.add_argument("--signal-delay-s", type=int, help="USR2 this many seconds before the time limit")
    group.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="extra sbatch option, e.g. --sbatch mail-type=END (repeatable)")


def _resources(args: argparse.Namespace, cfg):
    from launch.submit.slurm import resources_from_flags

    return resources_from_flags(args, cfg.slurm)


def cmd_submit(args: argparse.Namespace) -> int:
    from launch.submit.slurm import make_executor, prepare_run, print_gpu_shares, sbatch_script, submit
    from pipeline.config import config_to_yaml, load_config

    cfg = load_config(args.config, args.overrides)  # refuse a bad config before anything is written
    resources = _resources(args, cfg)
    print_gpu_shares({cfg.run.name: cfg}, resources)
    if args.dry_run:
        from pipeline.train.loop import run_dir_of

        run_dir = run_dir_of(cfg).resolve()
        print(f"# run directory: {run_dir}")
        print(sbatch_script(make_executor(run_dir / "slurm", resources, cfg.run.name)))
        print("# resolved config")
        print(config_to_yaml(cfg))
        return 0
    from launch.submit.slurm import check_prepared, check_startable, submission_lock
    from launch.reproduce.status import run_status
    from pipeline.dist.exit_codes import LOCKED
    from pipeline.train.loop import run_dir_of

    check_startable(resources)  # a dry run shows what would be asked, wherever it runs
    if not args.no_data_check:
        check_prepared([cfg])

    run_dir = run_dir_of(cfg).resolve()
    with submission_lock(run_dir.parent):
        status = run_status(run_dir)
        if status.state in ("queued", "running", "requeued"):
            job = f" as SLURM job {status.job_id}" if status.job_id else ""
            cancel = f"`scancel {status.job_id}`" if status.job_id else "stop it"
            print(f"error: {run_dir} is already {status.state}{job}: a second job would be refused by the run's lock; "
                  f"wait for it, or {cancel} and submit again (it resumes from the latest checkpoint)",
                  file=sys.stderr)
            return LOCKED
        cfg, run_dir = prepare_run(args.config, args.overrides)
        job = submit(run_dir, resources, cfg.run.name)
    print(f"submitted job {job.job_id}: {cfg.run.name}")
    print(f"run directory: {run_dir}")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from launch.submit.local import run_local
    from pipeline.config import load_config

    load_config(args.config, args.overrides)  # fail here, once, rather than in every process
    return run_local(args.config, args.overrides, args.nproc)


def cmd_sweep(args: argparse.Namespace) -> int:
    from launch.submit.slurm import check_prepared, check_startable, prepare_planned_run, print_gpu_shares, submission_lock, submit_array
    from launch.reproduce.status import run_statuses
    from pipeline.tables.spec import planned_runs, unique_runs

    runs = unique_runs(planned_runs(args.table, args.runs, args.seeds, tuple(args.overrides), args.rows))
    # What is left to submit is decided and submitted under one lock: a second sweep at once waits, then skips.
    folder = runs[0].run_dir.resolve().parent
    with submission_lock(folder) if not args.dry_run else contextlib.nullcontext():
        todo = []
        for run, status in zip(runs, run_statuses([run.run_dir for run in runs])):
            if status.state in ("finished", "queued", "running", "requeued"):
                print(f"skip {run.run_dir}: {status.state}")
            else:
                todo.append(run)
        if not todo:
            print(f"nothing to submit: all {len(runs)} runs of {args.table} are finished or in the queue")
            return 0
        resources = _resources(args, todo[0].cfg)
        print_gpu_shares({f"{run.label}, seed {run.seed}": run.cfg for run in todo}, resources)
        if args.dry_run:
            for run in todo:
                print(f"would submit {run.run_dir} ({run.label}, seed {run.seed})")
            return 0
        check_startable(resources)
        if not args.no_data_check:
            check_prepared([run.cfg for run in todo])
        run_dirs = [prepare_planned_run(run) for run in todo]
        jobs = submit_array(run_dirs, resources, Path(args.table).stem, folder / "_sweeps" / Path(args.table).stem,
                            args.array_parallelism)
    print(f"submitted job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} tasks for {args.table}")
    for run_dir, job in zip(run_dirs, jobs):
        print(f"  {job.job_id}: {run_dir}")
    return 0


def cmd_prep(args: argparse.Namespace) -> int:
    from launch.submit.slurm import JobResources, check_startable, submit_prep_array
    from pipeline.config.schema import SlurmConfig

    prep_args = [a for a in args.prep_args if a != "--"]
    if "--out" not in prep_args:
        print("error: the data_prep arguments need --out DIR", file=sys.stderr)
        return 2
    out = Path(prep_args[prep_args.index("--out") + 1]).resolve()
    names = [f for f in JobResources.__dataclass_fields__ if f != "additional"]
    defaults = SlurmConfig(gpus_per_node=0, tasks_per_node=1, cpus_per_task=args.cpus_per_task or 4)
    resources = JobResources.from_config(defaults, **{n: getattr(args, n, None) for n in names})
    check_startable(resources)
    jobs = submit_prep_array(prep_args, args.num_tasks, resources, out / "_slurm", args.array_parallelism)
    print(f"submitted data_prep job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} tasks into {out}")
    if args.wait:
        from launch.submit.waiting import wait_for_job

        for job in jobs:
            wait_for_job(job, "prep")
        print(f"done: {out / 'manifest.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate.job import run_config

    run_dir = Path(args.run_dir).resolve()
    cfg = run_config(run_dir, args.overrides)  # refuse a directory that is not a run before anything starts
    flags = ["--protocol", args.protocol, "--checkpoint", args.checkpoint, *args.overrides] + \
        (["--layer-responses"] if args.layer_responses else [])
    if not args.slurm:
        import subprocess

        from launch.submit.local import torchrun_command

        return subprocess.run(torchrun_command("pipeline.evaluate", [str(run_dir), *flags], args.nproc)).returncode
    from launch.submit.slurm import check_startable, submit_evaluation

    resources = _resources(args, cfg)
    check_startable(resources)
    job = submit_evaluation(run_dir, resources, args.protocol, args.checkpoint, args.layer_responses,
                            overrides=args.overrides)
    print(f"submitted evaluation job {job.job_id}: {run_dir} ({args.protocol}, checkpoint {args.checkpoint})")
    if args.wait:
        from launch.submit.waiting import wait_for_job

        record = wait_for_job(job, "evaluate")[0]  # every task returns the same totals
        print(f"{record['split']} {record['protocol']} error: top-1 {record['top1_error']:.2f}%, "
              f"top-5 {record['top5_error']:.2f}% ({record['samples']} samples) -> {run_dir / 'results.json'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from launch.reproduce.status import print_status

    return print_status(args.paths, args.runs)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from launch.reproduce.chain import reproduce

    return reproduce(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from launch.plan.bench import bench

    return bench(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from launch.plan.printing import plan

    return plan(args)


def _add_no_data_check_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-data-check", action="store_true",
                   help="submit even where data.root holds no prepared dataset here (the compute nodes alone see it)")


def _add_rows_flag(p: argparse.ArgumentParser) -> None:
    """--rows, as `sweep`, `plan` and `reproduce` share it: what is planned is what is then submitted."""
    p.add_argument("--rows", nargs="+", metavar="LABEL", help="only these rows of the table (default: every row)")


def parse(argv: List[str]) -> argparse.Namespace:
    """The command line, options and overrides in any order; the command's function is `func`."""
    from pipeline.dist.exit_codes import describe_exit_codes

    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__,
                                     epilog="`launch local` and the training jobs end with pipeline.train's "
                                            + describe_exit_codes(),
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit a training job to SLURM through submitit")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script and resolved config only")
    _add_no_data_check_flag(p)
    _add_resource_flags(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("local", help="run a training config on this machine in N processes",
                       description="Run a training config on this machine in N processes (ranks); its exit code is "
                                   "the ranks' (pipeline.train's).",
                       epilog=describe_exit_codes())
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--nproc", type=int, default=1, help="number of processes (ranks)")
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("sweep", help="submit every run of a paper table as one SLURM job array")
    p.add_argument("table", help="a table config, e.g. configs/tables/table6.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, applied to every run")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds for every row (default: the table's)")
    _add_rows_flag(p)
    p.add_argument("--runs", help="directory for the runs (default: each config's run.out_dir)")
    p.add_argument("--array-parallelism", type=int, default=64, help="how many array tasks run at once")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be submitted")
    _add_no_data_check_flag(p)
    _add_resource_flags(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("prep", help="shard a dataset with a SLURM job array (data_prep --num-tasks)")
    p.add_argument("--num-tasks", type=int, required=True, help="array tasks; each writes a disjoint part")
    p.add_argument("--array-parallelism", type=int, default=64)
    p.add_argument("--wait", action="store_true", help="wait for every task and report the manifest")
    p.add_argument("prep_args", nargs=argparse.REMAINDER, help="-- then data_prep's own arguments")
    _add_resource_flags(p)
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser("evaluate", help="evaluate a run (ten-crop, multi-scale...) here or as a SLURM job")
    p.add_argument("run_dir", help="a run directory (it holds config.yaml and checkpoints/)")
    p.add_argument("overrides", nargs="*", help="data.* and eval.* settings for this evaluation, e.g. "
                                                "data.eval_batch_per_gpu=50")
    p.add_argument("--protocol", choices=("center", "tencrop", "multiscale"), default="center")
    p.add_argument("--checkpoint", default="last", help="last, best, or a checkpoint directory")
    p.add_argument("--layer-responses", action="store_true", help="also record Fig. 7's layer responses")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (without --slurm)")
    p.add_argument("--slurm", action="store_true", help="submit a SLURM job (resources: the run's slurm section)")
    p.add_argument("--wait", action="store_true", help="with --slurm: wait for the result and print it")
    _add_resource_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="train, evaluate and report a whole paper table with SLURM dependencies")
    p.add_argument("table", help="a table config, e.g. configs/tables/table3.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, applied to every run")
    p.add_argument("--runs", required=True, help="directory for the runs; the report goes to DIR/reports")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds for every row (default: the table's)")
    _add_rows_flag(p)
    p.add_argument("--array-parallelism", type=int, help="how many training tasks run at once (default: 64)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their dependencies; submit nothing")
    _add_no_data_check_flag(p)
    p.add_argument("--local", action="store_true", help="run the same chain here, in-process, instead of on SLURM")
    p.add_argument("--nproc", type=int, default=1, help="with --local: processes (ranks) per run")
    _add_resource_flags(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("bench", help="measure each model's training images/s here and write a throughput profile")
    p.add_argument("--models", nargs="+", required=True,
                   help="model names (resnet50, cifar_resnet110, ...) or training configs")
    p.add_argument("overrides", nargs="*", help="section.key=value for every model, e.g. data.root=/data/imagenet")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per model")
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed steps first (compilation, cudnn autotune)")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this machine (without --slurm)")
    p.add_argument("--slurm", action="store_true", help="measure in a SLURM job with the given resources")
    p.add_argument("--out", default="throughput.json", help="the profile to write")
    _add_resource_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plan", help="GPU-hours and wall time of a table before submitting it")
    p.add_argument("table", help="a table config, e.g. configs/tables/table3.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, as given to reproduce")
    p.add_argument("--profile", help="a throughput profile from `launch bench` (default: reference figures)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds for every row (default: the table's)")
    _add_rows_flag(p)
    p.add_argument("--array-parallelism", type=int, default=64, help="how many training tasks run at once")
    from launch.plan.scaling import NODES_HELP, add_scaling_flags  # light: no torch, no config

    _add_resource_flags(p, node_counts_help=NODES_HELP)
    add_scaling_flags(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="state, progress, ETA and last metrics of runs, or of a table's runs")
    p.add_argument("paths", nargs="*", default=["runs"],
                   help="run directories, folders holding them, or table configs (their runs, and overall progress)")
    p.add_argument("--runs", help="with a table config: the directory holding its runs (as given to reproduce)")
    p.set_defaults(func=cmd_status)

    for command in sub.choices.values():
        command.formatter_class = HelpFormatter  # every command's --help shows its defaults
    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    if overrides and not hasattr(args, "overrides"):
        parser.error(f"`{args.command}` takes no section.key=value overrides (got {overrides[0]})")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    from launch.submit.queue import QueueUnanswered
    from pipeline.config import ConfigError

    args = parse(list(sys.argv[1:] if argv is None else argv))

    try:
        return args.func(args)
    except (ConfigError, QueueUnanswered) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

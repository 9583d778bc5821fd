"""What several `launch` commands share on their command lines, declared once: section.key=value overrides in
any order, the SLURM resource flags (one per field of the config's `slurm` section), and the table options
(--seeds, --rows, --array-parallelism, --no-data-check)."""

from __future__ import annotations

import argparse
import re
import typing

from launch.submit.resources import RESOURCES, ResourceFlags, flag_name
from pipeline.config.ranges import AT_LEAST_1, NON_NEGATIVE, RANGES
from pipeline.config.schema import SlurmConfig

# `section.key=value`: a config override, wherever it stands on the command line.
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")
ARRAY_PARALLELISM = 64  # training tasks of a table at once, unless --array-parallelism says otherwise

# argparse `type=`s for numeric flags: a zero count would divide later, a negative one mean nothing. argparse puts
# the flag before the message, which gives the range (`pipeline.config.ranges`, the ranges configs have too).
positive_int = AT_LEAST_1.parse_int
non_negative_int = NON_NEGATIVE.parse_int
seed_int = RANGES["run"]["seed"].parse_int


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
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


def add_overrides(parser: argparse.ArgumentParser, help: str = "section.key=value") -> None:
    parser.add_argument("overrides", nargs="*", help=help)


# What the resource flags say beyond their names (the fields of `pipeline.config.schema.SlurmConfig`).
_RESOURCE_HELP = {
    "gpus_per_node": "one task per GPU; 0 for CPU-only partitions",
    "tasks_per_node": "tasks per node where there are no GPUs",
    "time_minutes": "time limit in minutes",
    "max_requeues": "how many time-outs and preemptions to survive",
    "signal_delay_s": "USR2 this many seconds before the time limit",
    "additional": "extra sbatch option, e.g. --sbatch mail-type=END (repeatable)",
}


def add_resource_flags(parser: argparse.ArgumentParser, node_counts_help: str | None = None) -> None:
    """A flag for each field of the config's `slurm` section; none given keeps the config's value, and a number
    given must lie in its field's range (`pipeline.config.ranges`). With `node_counts_help` (`plan`), --nodes takes
    several counts to compare."""
    group = parser.add_argument_group("SLURM resources (defaults: the config's slurm section)")
    hints = typing.get_type_hints(SlurmConfig)
    for resource in RESOURCES:
        flag, kind, help = flag_name(resource), hints[resource], _RESOURCE_HELP.get(resource)
        if resource == "additional":
            group.add_argument(flag, action="append", default=[], dest="sbatch", metavar="KEY=VALUE", help=help)
        elif resource == "nodes" and node_counts_help:
            group.add_argument(flag, type=positive_int, nargs="+", metavar="N", dest="nodes",
                               help=node_counts_help)
        elif kind is bool:
            group.add_argument(flag, action="store_true", default=None, dest=resource, help=help)
        else:
            value_type = RANGES["slurm"][resource].parse_int if int in (kind, *typing.get_args(kind)) else str
            group.add_argument(flag, type=value_type, dest=resource, help=help)


def resource_flags(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> ResourceFlags:
    """The resource flags `args` holds, those given only; `skip`: flags a command reads otherwise (plan's --nodes)."""
    given = {name: getattr(args, name) for name in RESOURCES
             if name != "additional" and name not in skip and getattr(args, name, None) is not None}
    return ResourceFlags(given, tuple(getattr(args, "sbatch", None) or ()))


def add_table_options(parser: argparse.ArgumentParser, array_parallelism_default: int | None = ARRAY_PARALLELISM,
                      data_check: bool = True) -> None:
    """--seeds and --rows (what is planned is what is then submitted), --array-parallelism and --no-data-check, as
    `sweep`, `plan` and `reproduce` share them."""
    parser.add_argument("--seeds", type=seed_int, nargs="+", help="seeds for every row (default: the table's)")
    parser.add_argument("--rows", nargs="+", metavar="LABEL", help="only these rows of the table (default: every row)")
    parser.add_argument("--array-parallelism", type=positive_int, default=array_parallelism_default,
                        help="how many training tasks run at once" +
                             ("" if array_parallelism_default else f" (default: {ARRAY_PARALLELISM})"))
    if data_check:
        add_no_data_check(parser)


def add_no_data_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-data-check", action="store_true",
                        help="submit even where data.root holds no prepared dataset here (the compute nodes alone see "
                             "it)")

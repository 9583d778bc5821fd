"""What a SLURM partition offers (`sinfo`), and whether a job can ever start there.

A job that asks more than any node of its partition has (CPUs, GPUs, memory), more nodes than the
partition holds, or a longer time than its limit waits forever with a reason like `PartitionConfig`,
`ReqNodeNotAvail` or `PartitionTimeLimit`. `launch submit`, `sweep`, `reproduce`, `bench --slurm` and
`evaluate --slurm` ask before submitting and refuse such a job, naming the resource and the limit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

# SLURM's reasons for a pending job that waiting cannot change: the request exceeds what the partition is.
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "ReqNodeNotAvail", "BadConstraints",
                "InvalidAccount", "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob",
                "QOSMaxWallDurationPerJobLimit")


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    cpus_per_node: int  # of its largest node
    memory_mb: int
    gpus_per_node: int
    time_limit_minutes: int | None  # None: no limit


def read_partition(name: str | None) -> Partition | None:
    """The partition `name` (None: the cluster's default) as `sinfo` describes it; None without SLURM or where
    sinfo does not know it (SLURM itself then refuses the job, with its own message)."""
    if not shutil.which("sinfo"):
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%l|%D"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    groups = []  # one line per group of alike nodes
    for line in proc.stdout.splitlines():
        fields = line.split("|")
        if len(fields) != 6:
            continue
        partition, default = fields[0].rstrip("*"), fields[0].endswith("*")
        if partition == name or (name is None and default):
            groups.append(fields[1:] + [partition])
    if not groups:
        return None
    return Partition(name=groups[0][-1], nodes=sum(_int(g[4]) for g in groups),
                     cpus_per_node=max(_int(g[0]) for g in groups), memory_mb=max(_int(g[1]) for g in groups),
                     gpus_per_node=max(_gpus(g[2]) for g in groups), time_limit_minutes=_minutes(groups[0][3]))


def impossible(partition: Partition, nodes: int, tasks_per_node: int, cpus_per_task: int, gpus_per_node: int,
               mem_gb: int | None, time_minutes: int | None) -> list[str]:
    """What a job asks beyond the partition, one phrase each (empty: it can start once resources free up)."""
    where = f"partition {partition.name}"
    problems = []
    if nodes > partition.nodes:
        problems.append(f"{nodes} nodes (--nodes): {where} has {partition.nodes}")
    cpus = tasks_per_node * cpus_per_task
    if cpus > partition.cpus_per_node:
        problems.append(f"{cpus} CPUs a node ({tasks_per_node} task(s) x --cpus-per-task {cpus_per_task}): the "
                        f"nodes of {where} have {partition.cpus_per_node}")
    if gpus_per_node > partition.gpus_per_node:
        problems.append(f"{gpus_per_node} GPUs a node (--gpus-per-node): the nodes of {where} have "
                        f"{partition.gpus_per_node}")
    if mem_gb is not None and mem_gb * 1024 > partition.memory_mb:
        problems.append(f"{mem_gb} GB of memory a node (--mem-gb): the nodes of {where} have "
                        f"{partition.memory_mb / 1024:.0f}")
    if time_minutes and partition.time_limit_minutes and time_minutes > partition.time_limit_minutes:
        problems.append(f"{time_minutes} minutes (--time): {where} allows {partition.time_limit_minutes}")
    return problems


def _int(text: str) -> int:
    return int(re.sub(r"\D.*", "", text) or 0)  # "2", "23081", "128+" (nodes differ): the leading number


def _gpus(gres: str) -> int:
    """GPUs in sinfo's GRES column: `gpu:8`, `gpu:a100:4(S:0-1)`, several comma-separated, or `(null)`."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))


def _minutes(limit: str) -> int | None:
    """sinfo's time limit ([days-]hours:minutes:seconds, minutes, `infinite`) in whole minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)

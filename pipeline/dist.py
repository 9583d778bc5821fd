"""Where this process stands in a distributed job: the one place that reads rank and world size.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; a SLURM task (srun, or a
submitit job) has SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS and a node list to take the master
from. A process with neither is a world of one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_primary(self) -> bool:
        """Rank 0 alone writes logs, W&B and shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info_from_env(env: Optional[Mapping[str, str]] = None) -> DistInfo:
    """Read rank, world size and master from torchrun's variables, else SLURM's, else a world of one."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return DistInfo(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            # A port derived from the job id: two jobs sharing a node do not collide.
            master_port=int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
            source="slurm",
        )
    return DistInfo()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,009],cpu1' -> 'gpu003'."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = head.group(1), head.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def init_process_group(info: DistInfo, device_type: str, timeout_minutes: float) -> None:
    """Join the job's process group: nccl on GPU, gloo on CPU.

    The timeout bounds every collective, so a rank that died makes the others fail instead of
    waiting forever (SLURM or torchrun then ends or requeues the job).
    """
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


# How long the end of a run leaves communication threads to finish (see destroy_process_group).
_COMM_THREAD_GRACE_S = 0.5


def destroy_process_group() -> None:
    """Leave the process group, then give its communication threads a moment to go idle.

    A gloo worker thread drops its reference to a finished collective just after the caller's wait
    returns; when it holds the last one (DeepSpeed all-reduces tensors created in Python), that drop
    takes the GIL. During interpreter shutdown taking the GIL ends the thread, which C++ turns into
    `terminate called without an active exception` and exit code -6 for a run that succeeded.
    Sleeping releases the GIL, so any such thread finishes before the interpreter starts shutting down.
    """
    import time

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(_COMM_THREAD_GRACE_S)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def any_rank(flags: "list[bool]") -> "list[bool]":
    """Each flag, true on every rank when it is true on at least one (e.g. a signal seen by one rank)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return list(flags)
    tensor = torch.tensor([1.0 if f else 0.0 for f in flags], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def all_reduce_sum(values: "list[float]") -> "list[float]":
    """Sum a few numbers over ranks (evaluation counts); float64 so counts stay exact."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def _collective_device() -> str:
    import torch
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" and torch.cuda.is_available() else "cpu"

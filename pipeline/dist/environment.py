"""Where this process stands in a distributed job: the one place that reads rank and world size.

Three launchers start a training process, and each says where it stands in its own words:
    torchrun      RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / GROUP_RANK / MASTER_ADDR / MASTER_PORT
    srun, submitit  SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / SLURM_NODEID / SLURM_JOB_NODELIST
                  (the master is the first host of the job's node list, expanded by submitit)
    none          a world of one
`export_env` then writes the torchrun names for whatever started the process, because DeepSpeed and
torch.distributed read those for themselves (DeepSpeed refuses to start without LOCAL_RANK).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace

DEFAULT_PORT = 29500
# Linux hands out ephemeral (outgoing) ports from 32768-60999: a rendezvous port there can be taken by any
# connection on the node a moment before the job binds it. Job ports come from just below that range.
JOB_PORTS = range(20000, 32768)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    source: str = "single"  # single | torchrun | slurm
    node_rank: int = 0  # which node of the job this process runs on (SLURM_NODEID, torchrun's GROUP_RANK)
    local_world_size: int = 1  # processes on this node
    node_name: str = ""  # the scheduler's name for this node (SLURMD_NODENAME), else the host name

    @property
    def is_primary(self) -> bool:
        """Rank 0 alone writes logs, W&B and shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        """What a rank records about itself (run directory's ranks/), to check placement after the fact."""
        return {"rank": self.rank, "local_rank": self.local_rank, "world_size": self.world_size,
                "node_rank": self.node_rank, "local_world_size": self.local_world_size, "node": self.node_name,
                "host": socket.gethostname(), "launcher": self.source,
                "master": f"{self.master_addr}:{self.master_port}"}


def dist_info_from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Read rank, world size and master from torchrun's variables, else SLURM's, else a world of one."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if _in_slurm_step(env):
        return _from_slurm(env)
    return DistInfo(master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)), node_name=socket.gethostname())


def _from_torchrun(env: Mapping[str, str]) -> DistInfo:
    return DistInfo(
        rank=int(env["RANK"]),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        world_size=int(env["WORLD_SIZE"]),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
        source="torchrun",
        node_rank=int(env.get("GROUP_RANK", 0)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
        node_name=env.get("SLURMD_NODENAME") or socket.gethostname(),
    )


def _in_slurm_step(env: Mapping[str, str]) -> bool:
    """A task that srun (or submitit, through srun) started.

    The batch script of an sbatch job also has SLURM_PROCID=0 and SLURM_NTASKS, but it is one process,
    not one of the job's tasks: taking it for rank 0 of N would wait forever for N-1 ranks that never
    come. Only srun's tasks have a step id that is a number (the batch script's step is "batch", or absent).
    """
    return "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("SLURM_STEP_ID", "").isdigit()


def _from_slurm(env: Mapping[str, str]) -> DistInfo:
    world_size = int(env["SLURM_NTASKS"])
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    return DistInfo(
        rank=int(env["SLURM_PROCID"]),
        local_rank=int(env.get("SLURM_LOCALID", 0)),
        world_size=world_size,
        master_addr=env.get("MASTER_ADDR") or job_hosts(env.get("SLURM_JOB_NODELIST", ""))[0],
        master_port=int(env.get("MASTER_PORT") or job_port(int(env.get("SLURM_JOB_ID", "0")))),
        source="slurm",
        node_rank=int(env.get("SLURM_NODEID", 0)),
        local_world_size=_tasks_on_this_node(env, world_size, nodes),
        node_name=env.get("SLURMD_NODENAME") or socket.gethostname(),
    )


def job_port(job_id: int) -> int:
    """The rendezvous port of a SLURM job: derived from its id, so jobs sharing a node (consecutive ids) do not
    collide and every task of the job, requeued or not, agrees on it without talking; never ephemeral."""
    return JOB_PORTS[job_id % len(JOB_PORTS)]


def _tasks_on_this_node(env: Mapping[str, str], world_size: int, nodes: int) -> int:
    """SLURM_TASKS_PER_NODE is '2(x3),1': expand it and take this node's entry."""
    counts: list = []
    for part in env.get("SLURM_TASKS_PER_NODE", "").split(","):
        if part:
            count, _, times = part.partition("(x")
            counts += [int(count)] * int(times.rstrip(")") or 1)
    node = int(env.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else max(1, world_size // max(nodes, 1))


def job_hosts(nodelist: str) -> Sequence[str]:
    """The hosts of a SLURM node list, in order: 'gpu[003-004],cpu1' -> gpu003, gpu004, cpu1 (submitit's parser)."""
    if not nodelist.strip():
        return ["127.0.0.1"]
    from submitit.slurm.slurm import _parse_node_list  # what submitit's SlurmJobEnvironment.hostnames uses

    return _parse_node_list(nodelist)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,009],cpu1' -> 'gpu003'."""
    return job_hosts(nodelist)[0]


def export_env(info: DistInfo, env: MutableMapping[str, str] | None = None) -> None:
    """Write torchrun's variable names for `info`, for the libraries that read them themselves.

    DeepSpeed asserts LOCAL_RANK is set, and torch.distributed's env:// reads RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT; under srun or without any launcher nobody sets them.
    """
    env = os.environ if env is None else env
    env.update({
        "RANK": str(info.rank),
        "LOCAL_RANK": str(info.local_rank),
        "WORLD_SIZE": str(info.world_size),
        "LOCAL_WORLD_SIZE": str(info.local_world_size),
        "GROUP_RANK": str(info.node_rank),
        "MASTER_ADDR": info.master_addr,
        "MASTER_PORT": str(info.master_port),
    })


def cuda_device_index(info: DistInfo, visible_devices: int, env: Mapping[str, str] | None = None) -> int:
    """Which of the visible GPUs this rank uses.

    A task that SLURM bound to one GPU (`--gpus-per-task=1`, or CUDA_VISIBLE_DEVICES with one entry)
    sees that GPU as device 0, whatever its local rank; a task that sees every GPU of its node takes
    the one at its local rank.
    """
    env = os.environ if env is None else env
    if visible_devices < 1:
        raise RuntimeError("no CUDA device is visible to this process")
    if visible_devices == 1:
        return 0
    if info.local_rank < visible_devices:
        return info.local_rank
    raise RuntimeError(
        f"rank {info.rank} has local rank {info.local_rank} but sees only {visible_devices} GPUs "
        f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}): ask for one task per GPU "
        "(--gpus-per-node equal to the tasks per node) or bind one GPU to each task (--gpus-per-task=1)")


def free_port() -> int:
    """A TCP port on this machine that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_free_port(info: DistInfo) -> DistInfo:
    """A world of one still needs a process group for DeepSpeed: a port nobody else holds, unless MASTER_PORT says."""
    if info.source != "single" or "MASTER_PORT" in os.environ:
        return info
    return replace(info, master_port=free_port())

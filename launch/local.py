"""Run a training config on this machine in N processes (torchrun's launcher), no SLURM needed."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Sequence

from pipeline.dist import free_port


def local_command(config: str, overrides: Sequence[str], nproc: int, port: int | None = None) -> List[str]:
    """The torchrun command line that runs `pipeline.train` in `nproc` processes."""
    return torchrun_command("pipeline.train", [config, *overrides], nproc, port)


def torchrun_command(module: str, args: Sequence[str], nproc: int, port: int | None = None) -> List[str]:
    """The torchrun command line that runs `python -m <module> <args>` in `nproc` processes on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1", f"--master-port={port or free_port()}",
        "-m", module, *args,
    ]


def run_local(config: str, overrides: Sequence[str], nproc: int, threads_per_process: int | None = None) -> int:
    """Run to completion; the return code is the training's (3: stopped by a signal after checkpointing)."""
    env = dict(os.environ)
    # Without this each of the N processes would start one thread per core and fight over them.
    cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process or max(1, cores // nproc)))
    return subprocess.run(local_command(config, overrides, nproc), env=env).returncode

"""Run a training config on this machine in N processes (torchrun's launcher), no SLURM needed.

Ctrl-C (or SIGTERM) stops a local run the way SLURM's signal stops a job: every rank gets SIGTERM, the
ranks agree on a step, save a checkpoint and exit with 3; the same command again resumes. A second
Ctrl-C kills them at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.dist import free_port
from pipeline.dist.exit_codes import FAILED
from pipeline.dist.exit_codes import INTERRUPTED as EXIT_INTERRUPTED  # a light module: pipeline.train loads torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stopped_by_user(code: int) -> bool:
    """Whether `run_local`'s return code means the run was stopped (Ctrl-C: saved, 3) or killed (128 + signal),
    rather than failed: a chain of runs stops there instead of going on with the next."""
    return code == EXIT_INTERRUPTED or code > 128


def local_command(config: str, overrides: Sequence[str], nproc: int, port: int | None = None) -> list[str]:
    """The torchrun command line that runs `pipeline.train` in `nproc` processes."""
    return torchrun_command("pipeline.train", [config, *overrides], nproc, port)


def torchrun_command(module: str, args: Sequence[str], nproc: int, port: int | None = None) -> list[str]:
    """The torchrun command line that runs `python -m <module> <args>` in `nproc` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", *_torchrun_args(module, args, nproc, port)]


def _torchrun_args(module: str, args: Sequence[str], nproc: int, port: int | None = None) -> list[str]:
    return ["--nnodes=1", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={port or free_port()}", "-m", module, *args]


def run_local(config: str, overrides: Sequence[str], nproc: int, threads_per_process: int | None = None) -> int:
    """Train to completion; the return code is the training's (3: stopped by a signal after checkpointing)."""
    return run_module_local("pipeline.train", [config, *overrides], nproc, threads_per_process)


def run_module_local(module: str, args: Sequence[str], nproc: int, threads_per_process: int | None = None) -> int:
    """`python -m <module> <args>` in `nproc` ranks to completion; the return code is the first failing rank's.

    torchrun's agent runs in this process rather than in a child: the ranks are then this process's
    children, so a stop signal reaches them directly and their exit codes come back here (a torchrun
    process exits with 1 whatever its ranks returned).
    """
    # Without this each of the N processes would start one thread per core and fight over them.
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // nproc)
    # torch's agent would turn SIGINT and SIGTERM into an exception that kills the ranks with that same
    # signal before they can save: `_StopRanks` handles those two instead.
    agent_signals = ["--signals-to-handle=SIGHUP,SIGQUIT"]
    with _environ(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads))), _StopRanks() as stop:
        code = _launch(agent_signals + _torchrun_args(module, args, nproc))
    return 128 + stop.killed_by if stop.killed_by else code


def _launch(torchrun_args: Sequence[str]) -> int:
    """What `torchrun <torchrun_args>` does, returning the first failing rank's exit code (0: all succeeded)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: PLC0415 - torch's launcher, only when ranks are started
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415 - torch's launcher, only when ranks are started
    from torch.distributed.launcher.api import elastic_launch  # noqa: PLC0415 - torch's launcher, only when ranks are started
    from torch.distributed.run import config_from_args, parse_args  # noqa: PLC0415 - torch's launcher, only when ranks are started

    config, entrypoint, args = config_from_args(parse_args(list(torchrun_args)))
    try:
        with _quiet_agent():
            elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()  # the root cause: the first rank to fail
        code = 128 - failure.exitcode if failure.exitcode < 0 else failure.exitcode  # killed by N: 128 + N
        if code == FAILED or code > 128:  # other codes come with the rank's own one-line error
            how = (f"was killed by {signal.Signals(code - 128).name}" if code > 128
                   else "failed (its traceback is above)")
            print(f"launch: rank {rank} (pid {failure.pid}) {how}; the other ranks were stopped", file=sys.stderr)
        return code
    except SignalException as e:  # SIGHUP or SIGQUIT: the agent has killed the ranks with it
        return 128 + int(e.sigval)
    return 0


@contextlib.contextmanager
def _quiet_agent() -> Iterator[None]:
    """torch's agent logs each rank's failure and the signals it sends to the others; a rank's own error line (or
    traceback) says it better, and `_launch` adds one line where that is not enough."""

    agent = logging.getLogger("torch.distributed.elastic")
    level = agent.level
    agent.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        agent.setLevel(level)


class _StopRanks:
    """While installed, SIGINT or SIGTERM to this process asks every rank to save and stop; a second kills them.

    The ranks run in sessions of their own (torch starts them so), so a terminal's Ctrl-C reaches only
    this process: it passes SIGTERM on, which training handles like SLURM's (`pipeline.dist.process.StopSignal`).
    Ranks that start after the signal (it came while the agent was still setting up) get it too.
    """

    def __init__(self) -> None:
        self.received = 0
        self.killed_by: int | None = None
        self._previous: dict = {}
        self._signalled: dict[int, int] = {}  # pid -> the last signal sent to it
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="launch-stop-ranks", daemon=True)

    def __enter__(self) -> _StopRanks:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received == 1:
            print(f"launch: {signal.Signals(signum).name}: every rank saves a checkpoint and stops "
                  "(Ctrl-C again to kill them now)", file=sys.stderr, flush=True)
            self._watcher.start()
        else:
            print("launch: killing every rank", file=sys.stderr, flush=True)
            self.killed_by = signum
        self._signal_ranks()

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            self._signal_ranks()

    def _signal_ranks(self) -> None:
        sig = signal.SIGKILL if self.killed_by else signal.SIGTERM
        for pid in child_processes(os.getpid()):
            if self._signalled.get(pid) == sig:
                continue
            self._signalled[pid] = sig
            try:
                if sig == signal.SIGKILL:
                    os.killpg(pid, sig)  # each rank leads its own process group, with its helpers
                else:
                    os.kill(pid, sig)  # the rank alone: its data-loading processes carry on until it stops
            except ProcessLookupError:
                pass  # it ended on its own meanwhile


def child_processes(parent: int) -> list[int]:
    """The processes whose parent is `parent` (for torch's agent: the ranks it started)."""
    return _children_by_parent().get(parent, [])


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it, parents before children (e.g. torchrun and its ranks)."""
    children = _children_by_parent()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue  # it ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables (the agent passes this process's environment on to the ranks), then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

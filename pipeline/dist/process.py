"""Process-level set-up for a run: device, seeds and determinism, RNG state, stop signals, memory."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from pipeline.dist import DistInfo, cuda_device_index


def resolve_device(choice: str, info: DistInfo) -> torch.device:
    """`auto`: this rank's GPU when CUDA is present, else the CPU (see `cuda_device_index` for which GPU)."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device is 'cuda' but no CUDA device is visible")
        index = cuda_device_index(info, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def use_task_cpus(env: Mapping[str, str] | None = None) -> int | None:
    """Compute threads per process: what OMP_NUM_THREADS says if set, else the CPUs SLURM gave the task.

    torch starts a thread per core it can see. Where SLURM does not bind a task to its CPUs (no
    affinity or cgroup task plugin), each task of a node would start one per core of the whole node
    and the tasks would fight over them; with small batches the spinning threads then cost more than
    the work. Returns the thread count it set, or None where it left torch's choice alone.
    """
    env = os.environ if env is None else env
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if "OMP_NUM_THREADS" in env or not cpus.isdigit():
        return None
    torch.set_num_threads(int(cpus))
    return int(cpus)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every library; with `deterministic`, ask for bitwise-reproducible kernels too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also fills every new tensor's memory with NaN (a check for reads of uninitialised
        # memory, which no kernel here makes). DeepSpeed's ZeRO buckets are hundreds of MB: filling them made
        # its steps 15x slower on CPU. Results do not depend on it.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Every library's RNG state, as tensors and plain data (loadable with weights_only)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """Remembers SIGUSR2 / SIGTERM / SIGINT (SLURM's warning before the time limit, scancel, a requeue or a
    preemption, Ctrl-C).

    The handler only sets a flag: the loop checks it between steps, and all ranks agree on it through a
    collective before saving, so the checkpoint is consistent across ranks. A second SIGINT (Ctrl-C twice)
    stops at once, without a checkpoint, as a terminal user expects.
    """

    SIGNALS = ("SIGUSR2", "SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.received: str | None = None
        self.received_at: float | None = None  # time.monotonic() of the first stop signal
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self.received_at = self.received_at or time.monotonic()
        print(f"received {self.received}: checkpointing at the next step", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGTERM held back from this thread while it starts helper processes, which are born with it blocked (a
    signal meanwhile is delivered once the block ends): SLURM's SIGTERM cannot reach a worker in the moment
    before `ignore_stop_signals` has run in it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(*_: Any) -> None:
    """For a rank's helper processes (data-loading workers): stop signals from anyone but their rank are ignored.

    SLURM signals every process of the job, and a worker that died of it would fail the batch its rank
    needs to reach the checkpoint; the workers end with their rank instead, after it has saved. Their rank
    still ends them with SIGTERM (the loader's shutdown, or multiprocessing's at exit): SIGTERM is blocked
    (from birth, when started under `stop_signals_held`) and a thread of the worker reads who sent it, ending
    the worker only when it was its parent.
    """
    for name in ("SIGUSR2", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # every thread started from here on inherits it

    def end_when_the_parent_asks() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass  # the job's SIGTERM: the rank saves, then ends this worker itself
        # Its parent ends it (the loader's shutdown, or multiprocessing's at exit): a clean end, as a worker whose
        # loader was closed, which torch does not report as a worker that failed.
        os._exit(0)

    threading.Thread(target=end_when_the_parent_asks, name="stop-signal-filter", daemon=True).start()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

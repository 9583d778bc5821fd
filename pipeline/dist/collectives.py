"""The job's process group and the collectives that make its ranks agree.

- `init_process_group` / `destroy_process_group`: join (nccl on GPU, gloo on CPU) and leave it cleanly;
- `watch_for_hangs`: once training runs, a rank that makes no progress for `engine.hang_timeout_minutes` (a
  collective waiting for a rank that hung) ends with one line and exit code 8 (`pipeline.dist.watchdog`), on gloo
  and NCCL alike; `hang_error` says a backend's own timeout (at start-up) as `RankHung`, with the same code;
- `any_rank`, `max_over_ranks`, `all_reduce_sum`: a flag or a few numbers over every rank (a stop signal, the
  slowest rank's step time, evaluation counts);
- `on_every_rank`, `from_primary`: a step that can fail on one rank ends every rank the same way (`RankFailed`),
  and what one rank can read for all is read once and broadcast.

Every function is a no-op (or the local value) without a process group: one process needs no collectives.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from pipeline.dist.environment import DistInfo, export_env
from pipeline.dist.exit_codes import HUNG, exit_code_of
from pipeline.dist.watchdog import note_progress, start_watching

T = TypeVar("T")


def init_process_group(info: DistInfo, device_type: str, timeout_minutes: float) -> None:
    """Join the job's process group: nccl on GPU, gloo on CPU (after `export_env`, for DeepSpeed).

    The timeout bounds every collective, so a rank that died makes the others fail instead of
    waiting forever (SLURM or torchrun then ends or requeues the job).
    """
    if dist.is_initialized():
        return
    export_env(info)
    _timeout.update(minutes=timeout_minutes, hangs_watched=False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


_timeout = {"minutes": 0.0, "hangs_watched": False}  # what a collective of this process waits at most, now


# How much longer than engine.hang_timeout_minutes the backend's own timeout is, once training runs: enough for the
# project's watchdog (which looks every few seconds) to have ended the process first, with its line, on any backend.
BACKEND_MARGIN_MINUTES = 2.0


def watch_for_hangs(timeout_minutes: float, last_words: Iterable[Callable[[], None]] = ()) -> None:
    """From now on, a rank that makes no progress for `timeout_minutes` (`note_progress`: a step, an evaluation
    batch, a collective of this module) ends with one `error:` line and exit code 8, after `last_words` (the run
    lock released); the launcher (torchrun's agent, srun with --kill-on-bad-exit) then ends the rest, the hung one
    included. Training calls it after its first step: what may legitimately keep one rank busy while the others
    wait (compilation, a checkpoint load) is over, and a step, an evaluation's end or a save's gather waits seconds.

    The process group's own timeout (on every group: DeepSpeed makes its own) becomes `timeout_minutes` plus a
    margin: the backend's end of a hang differs (gloo raises; NCCL aborts the process: no line, exit code 134, the
    lock left behind), so it is only the backstop. A no-op without a process group (one process has no peer)."""
    if not dist.is_initialized():
        return
    backend_minutes = timeout_minutes + BACKEND_MARGIN_MINUTES
    _timeout.update(minutes=backend_minutes, hangs_watched=True)
    # torch's setter (public since 2.14 as `set_timeout`; before, the private `_set_pg_timeout`, which 2.14 warns
    # of); the groups are every one this process belongs to.
    set_timeout = getattr(dist, "set_timeout", None) or distributed_c10d._set_pg_timeout
    for group in list(distributed_c10d._world.pg_map):
        set_timeout(datetime.timedelta(minutes=backend_minutes), group)
    start_watching(timeout_minutes, _hung_message(f"this rank made no progress for {timeout_minutes:g} min "
                                                  "(engine.hang_timeout_minutes): another rank hung or died, or "
                                                  "this one did"), last_words)


class RankHung(RuntimeError):
    """A collective waited past the hang timeout: another rank hung (or died without its connection closing)."""

    exit_code = HUNG


def hang_error(error: BaseException) -> RankHung | None:
    """`error` said as a RankHung when it is a collective's timeout (gloo and NCCL word it differently), else None."""
    text = str(error)
    if not isinstance(error, RuntimeError) or not any(w in text for w in ("Timed out", "timed out", "Timeout")):
        return None
    which = ("engine.hang_timeout_minutes and a margin" if _timeout["hangs_watched"]
             else "engine.timeout_minutes, at start-up")
    return RankHung(_hung_message(f"a collective waited {_timeout['minutes']:g} min ({which}) for another rank, "
                                  "which hung or died"))


def _hung_message(what: str) -> str:
    return (f"{what}: every process of the job is ended so that it frees its GPUs; run the same command (or requeue "
            "the job) to resume from the latest checkpoint")


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
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(_COMM_THREAD_GRACE_S)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
        note_progress()


def any_rank(flags: list[bool]) -> list[bool]:
    """Each flag, true on every rank when it is true on at least one (e.g. a signal seen by one rank)."""
    if not dist.is_initialized():
        return list(flags)
    tensor = torch.tensor([1.0 if f else 0.0 for f in flags], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    flags = [bool(v) for v in tensor.tolist()]
    note_progress()
    return flags


def max_over_ranks(values: list[float]) -> list[float]:
    """Each number's largest value over ranks (a flag as 0 or 1 is true where some rank's is), in one collective."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    result = tensor.tolist()  # on NCCL, where the host waits for the collective
    note_progress()
    return result


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over ranks (evaluation counts); float64 so counts stay exact."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    result = tensor.tolist()
    note_progress()
    return result


class RankFailed(RuntimeError):
    """Raised on every rank by `on_every_rank` when another rank failed: its message, exit code and rank."""

    def __init__(self, message: str, exit_code: int, rank: int) -> None:
        super().__init__(message)
        self.exit_code, self.rank = exit_code, rank


def on_every_rank(work: Callable[[], T], gather: bool = False):
    """Run `work` here; if it failed on any rank, fail on every rank. Returns this rank's result, or with `gather`
    every rank's (in rank order; they must pickle).

    A step that can fail on one rank only (a file it cannot write, a checkpoint it cannot read) would
    otherwise leave the others waiting at their next collective until the process-group timeout, then
    dying with a communication traceback of their own. Here every rank learns of the failure at once:
    the failing rank raises its own error (with its traceback where it is unexpected), the others
    `RankFailed` with its message and exit code, so every process of the job ends the same way.
    Costs one all-gather, like a barrier: use it where a barrier was needed anyway."""
    try:
        result, error = work(), None
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised again here
        result, error = None, e
    if not dist.is_initialized():
        if error is not None:
            raise error
        return [result] if gather else result
    outcome = (True, result if gather else None) if error is None else (False, (str(error), exit_code_of(error)))
    outcomes: list = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, outcome)
    note_progress()
    if error is not None:
        raise error
    for rank, (ok, value) in enumerate(outcomes):
        if not ok:
            message, code = value
            raise RankFailed(message, code, rank)
    return [value for _, value in outcomes] if gather else result


def from_primary(work: Callable[[], T]) -> T:
    """`work()` on the primary rank only, its result (or its failure) given to every rank with one broadcast.

    For what one rank per job can do for all (validating a dataset's thousand index files): the others read
    nothing. A failure ends every rank as in `on_every_rank` (the primary raises its own error, the others
    `RankFailed` with its message and exit code). The result must pickle."""
    if not dist.is_initialized():
        return work()
    error: Exception | None = None
    outcome: object = None
    if dist.get_rank() == 0:
        try:
            outcome = (True, work())
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised again here
            error, outcome = e, (False, (str(e), exit_code_of(e)))
    shared = [outcome]
    dist.broadcast_object_list(shared, src=0)
    note_progress()
    if error is not None:
        raise error
    ok, value = shared[0]  # type: ignore[misc]
    if not ok:
        message, code = value
        raise RankFailed(message, code, 0)
    return value


def _collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" and torch.cuda.is_available() else "cpu"

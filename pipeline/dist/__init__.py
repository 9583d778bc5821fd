"""Where a process stands in a distributed job, and how its ranks agree.

- `environment`: rank, world size and master from whichever launcher started the process (torchrun, srun or
  submitit, none), exported under torchrun's names for the libraries that read them;
- `collectives`: the process group, and the few collectives that make ranks agree (a flag on any rank, a
  failure on one rank ended on every rank, what the primary read given to all), the hang watch's start;
- `watchdog`: the hang watch itself, the same end of a hung rank on every backend (one line, exit code 8);
- `process`: one process's set-up (device, threads, seeds, RNG state, stop signals);
- `exit_codes`: one code per kind of end, shared with `launch`.

The names of `environment` and `collectives` are importable from here (`from pipeline import dist;
dist.on_every_rank(...)`); importing this package loads neither torch nor anything else heavy (the collectives,
which need torch, are loaded when one is first asked for).
"""

from pipeline.dist.environment import (
    DEFAULT_PORT,
    JOB_PORTS,
    DistInfo,
    cuda_device_index,
    dist_info_from_env,
    export_env,
    first_host,
    free_port,
    job_hosts,
    job_port,
    with_free_port,
)
from pipeline.dist.watchdog import note_progress, stop_watching

_COLLECTIVES = ("RankFailed", "RankHung", "all_reduce_sum", "any_rank", "barrier", "destroy_process_group",
                "from_primary", "hang_error", "init_process_group", "max_over_ranks", "on_every_rank",
                "watch_for_hangs")

__all__ = ["DEFAULT_PORT", "JOB_PORTS", "DistInfo", "cuda_device_index", "dist_info_from_env", "export_env",
           "first_host", "free_port", "job_hosts", "job_port", "note_progress", "stop_watching", "with_free_port",
           *_COLLECTIVES]


def __getattr__(name: str):
    # The collectives load torch: they are found here only when one is asked for, so that `launch` reads this
    # package's environment and exit codes without it.
    if name in _COLLECTIVES:
        from pipeline.dist import collectives  # noqa: PLC0415 - see above

        return getattr(collectives, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Whether a stop fits in the seconds SLURM gives it: `scancel`, a preemption or a node's end of time sends
SIGTERM, then SIGKILL the cluster's `KillWait` seconds later (30 by default; `scontrol show config`). Training
takes a stop at its next check (`checkpoint.check_every_seconds` apart at most, one step where a step is
slower) and writes its checkpoint synchronously: what is not written by then is lost.

`launch submit`, `sweep` and `reproduce` warn, before submitting, of a run whose stop would not fit: measured
where the run has stopped before (its `stopped by` records carry `stop_s`, from the signal to the checkpoint
written), else planned from the state a checkpoint holds and a shared filesystem's write rate.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence

from pipeline.config import ExperimentConfig
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics

# A conservative write rate of one rank's checkpoint file to a busy NFS or Lustre (bytes/s).
SHARED_FS_WRITE_BYTES_PER_S = 200e6
# What each parameter costs in a checkpoint: fp32 weights and SGD's momentum (buffers are negligible).
CHECKPOINT_BYTES_PER_PARAMETER = 8


def read_kill_wait() -> int | None:
    """The cluster's KillWait in seconds; None without SLURM or where its controller does not say."""
    if not shutil.which("scontrol"):
        return None
    proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    found = re.search(r"^KillWait\s*=\s*(\d+)", proc.stdout, re.MULTILINE) if proc.returncode == 0 else None
    return int(found.group(1)) if found else None


def warn_of_slow_stops(cfgs: Sequence[ExperimentConfig]) -> None:
    """`stop_warnings` against this cluster's KillWait, on stderr (stdout may be a dry run's sbatch script)."""
    for warning in stop_warnings(cfgs, read_kill_wait()):
        print(f"warning: {warning}", file=sys.stderr)


def stop_warnings(cfgs: Sequence[ExperimentConfig], kill_wait_s: int | None) -> list[str]:
    """One warning per run whose stop (signal to checkpoint written) would take more than `kill_wait_s`."""
    if kill_wait_s is None:
        return []
    warnings = []
    for cfg in cfgs:
        seconds, how = stop_seconds(cfg)
        if seconds > kill_wait_s:
            warnings.append(
                f"{cfg.run.name}: a stop takes {seconds:.0f} s ({how}), more than the cluster's KillWait of "
                f"{kill_wait_s} s between SLURM's SIGTERM and its SIGKILL: a scancel or preemption would lose "
                "the work since the last checkpoint. Lower checkpoint.check_every_seconds, save more often "
                "(checkpoint.every_minutes), or ask the cluster's admins for a longer KillWait")
    return warnings


def stop_seconds(cfg: ExperimentConfig) -> tuple[float, str]:
    """How long the run takes from a stop signal to its checkpoint written, and how that is known."""
    records = read_metrics(RunDir.of(cfg).path) if RunDir.of(cfg).metrics.exists() else []
    measured = [float(m["stop_s"]) for m in records if m.get("stop_s") is not None]
    if measured:
        return max(measured), f"the longest of its {len(measured)} stops so far"
    write_s = _parameters(cfg) * CHECKPOINT_BYTES_PER_PARAMETER / SHARED_FS_WRITE_BYTES_PER_S
    return (cfg.checkpoint.check_every_seconds + write_s,
            f"planned: a check every {cfg.checkpoint.check_every_seconds:g} s, then the checkpoint written at "
            f"{SHARED_FS_WRITE_BYTES_PER_S / 1e6:.0f} MB/s")


def _parameters(cfg: ExperimentConfig) -> int:
    import torch  # noqa: PLC0415 - counting parameters builds a net; parsing launch's flags must not load torch

    from pipeline.models import build_model  # noqa: PLC0415 - see above

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg.model).parameters())

"""How a training ends: the run finished (with its final evaluation), or a stop signal interrupted it after a
checkpoint. `python -m pipeline.train` exits 0 or 3 (`exit_codes.INTERRUPTED`) for them; a SLURM job requeues
itself after an interruption by its time-limit signal."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """The run trained to its end: its final evaluation (the centre view of the evaluation split), as
    results.json records it under "train"."""

    step: int
    epoch: int
    split: str
    samples: int
    top1_error: float  # percent
    top5_error: float  # percent
    protocol: str = "center"

    def as_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "split": self.split, "protocol": self.protocol,
                "samples": self.samples, "top1_error": self.top1_error, "top5_error": self.top5_error}


@dataclass(frozen=True)
class Interrupted:
    """A stop signal ended training after a checkpoint of `step`: the same command (or the requeued job) resumes."""

    step: int
    signal: str | None  # what this rank received (SIGUSR2, SIGTERM, SIGINT); None: a signal on another rank

    def as_dict(self) -> dict:
        return {"interrupted": True, "step": self.step, "signal": self.signal}


TrainOutcome = Finished | Interrupted

"""What a benchmark run measured, read back: the final evaluation's start and end seen in metrics.jsonl as they came
(`EvalTimer`), the training images/s over the timed windows, the start-up, and the profile they make.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from launch.plan.profile import load_profile
from pipeline.config import ConfigError


class EvalTimer:
    """Watches a run's metrics.jsonl for the final evaluation's start event and its record, noting when each came.

    Training writes no times into its records, so the final evaluation is timed from outside, by polling.
    """

    POLL_S = 0.05

    def __init__(self, metrics: Path, enabled: bool = True) -> None:
        self.metrics, self.enabled = metrics, enabled
        self.started: float | None = None
        self.ended: float | None = None
        self.samples: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-eval-timer", daemon=True)
        self._offset = 0

    def __enter__(self) -> EvalTimer:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self.enabled:
            self._thread.join()
            self._read()  # whatever came after the last poll (its time is then not known: see window())

    def window(self) -> dict | None:
        """{"samples", "seconds"} of the final evaluation, if both ends were seen while it ran."""
        if self.started is None or self.ended is None or self.samples is None:
            return None
        return {"samples": self.samples, "seconds": self.ended - self.started}

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_S):
            self._read(now=time.perf_counter())

    def _read(self, now: float | None = None) -> None:
        try:
            with self.metrics.open() as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return  # not written yet
        complete = chunk[:chunk.rfind("\n") + 1]  # a line being written is read next time
        self._offset += len(complete.encode())
        for line in complete.splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("event") == "final evaluation":
                self.started = now
            elif record.get("kind") == "final" and "val_samples" in record:
                self.ended, self.samples = now, int(record["val_samples"])


def train_throughput(records: list[dict], warmup: int) -> tuple[float, float, int]:
    """(images/s, data-wait fraction, timed steps) over the logging windows after step `warmup`.

    Each record is one window's images/s; the rate over all of them is images over time, i.e. their
    harmonic mean weighted by each window's steps.
    """
    previous, steps, seconds_per_image, wait = warmup, 0, 0.0, 0.0
    for record in sorted((r for r in records if "images_per_s" in r), key=lambda r: r["step"]):
        if record["step"] <= warmup:
            continue
        n = record["step"] - previous
        previous = record["step"]
        steps += n
        seconds_per_image += n / record["images_per_s"]
        wait += n * record.get("data_wait_fraction", 0.0)
    if not steps:
        raise ConfigError(f"no training records after the {warmup} warm-up steps in the run's metrics")
    return steps / seconds_per_image, wait / steps, steps


def startup_seconds(wall_s: float, total_steps: int, global_batch: int, images_per_s: float,
                    eval_window: dict | None) -> float:
    """What a run spent besides its steps (all at the timed rate) and its final evaluation: process start,
    imports, dataset open, model build, the warm-up steps' extra time (compilation, autotuning), the final
    save, teardown. `launch plan` charges it to every start of a job."""
    evaluation = eval_window["seconds"] if eval_window else 0.0
    return max(0.0, wall_s - total_steps * global_batch / images_per_s - evaluation)


def merged_profile(out: Path, measured: dict[str, dict], machine: dict, software: dict, launcher: dict) -> dict:
    """The new profile; an existing one at `out` from the same kind of machine keeps its other models."""
    models: dict[str, dict] = {}
    if out.is_file():
        try:
            old = load_profile(out)
        except ConfigError as e:
            print(f"bench: {out} is replaced ({e})", file=sys.stderr)
        else:
            same = old["kind"] == "measured" and all(old.get("machine", {}).get(k) == machine.get(k)
                                                     for k in ("device", "gpu", "cpu"))
            if same:
                models = {k: v for k, v in old["models"].items() if k not in measured}
                if models:
                    print(f"bench: {out} was measured on the same kind of machine: keeping its "
                          f"{', '.join(models)}", flush=True)
            else:
                print(f"bench: {out} was measured on another machine; it is replaced", file=sys.stderr)
    return {"kind": "measured", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m launch bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else None,
            **launcher, "machine": machine, "software": software, "models": {**models, **measured}}


def summary(profile: dict) -> str:
    """The profile as a table: one line per model."""
    header = (f"{'model':<18} {'procs':>5} {'batch':>6} {'prec':>5} {'engine':>9} {'images/s':>10} "
              f"{'per proc':>9} {'eval/proc':>9} {'data wait':>9} {'start-up':>8}")
    lines = [f"machine: {_machine_line(profile['machine'])}",
             "software: " + ", ".join(f"{k} {v}" for k, v in profile["software"].items() if v is not None),
             header, "-" * len(header)]
    startup = "startup_s"  # absent from profiles written before bench measured it
    for name, e in sorted(profile["models"].items()):
        evaluation = e.get("eval_images_per_s_per_gpu")
        lines.append(f"{name:<18} {e['world_size']:>5} {e['batch_size']:>6} {e['precision']:>5} "
                     f"{e.get('engine', '-'):>9} {e['images_per_s']:>10.1f} {e['images_per_s_per_gpu']:>9.1f} "
                     f"{(f'{evaluation:.1f}' if evaluation else '-'):>9} "
                     f"{e.get('data_wait_fraction', 0.0):>9.3f} "
                     f"{(f'{e[startup]:.1f} s' if e.get(startup) is not None else '-'):>8}")
    return "\n".join(lines)


def _machine_line(machine: dict) -> str:
    if machine.get("gpu"):
        return (f"{machine['gpu_count']} x {machine['gpu']}, {machine['cpu_count']} CPUs ({machine['cpu']}), "
                f"{machine['host']}")
    return f"cpu: {machine['cpu_count']} x {machine['cpu']}, no GPU, {machine['host']}"

"""Per-GPU images/s of a run: from a measured profile (`launch bench`) or the reference figures, else scaled by
multiply-adds per image from the nearest net of its family."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import ExperimentConfig
from pipeline.models.complexity import measure
from pipeline.models.registry import get_spec


@dataclass(frozen=True)
class Rate:
    """Images/s per GPU of one run's training and of its evaluation (centre views), and how they were had."""

    train: float
    eval: float
    notes: tuple[str, ...] = ()
    eval_measured: bool = False
    startup_s: float | None = None  # a job's start-up, as `launch bench` measured it (None: not measured)


class Rates:
    """Per-GPU images/s of a run: from the profile, else scaled by FLOPs from a measured or reference net."""

    def __init__(self, profile: dict, reference: dict) -> None:
        self.profile, self.reference = profile, reference
        self.measured = profile["kind"] == "measured"
        self.eval_factor = float(profile.get("eval_factor") or reference["eval_factor"])
        self._macs: dict[str, int] = dict(reference.get("macs", {}))

    def for_run(self, cfg: ExperimentConfig, gpus: int) -> Rate:
        name, precision = cfg.model.name, cfg.engine.precision
        notes: list[str] = []
        base, source, scale = name, self.profile, 1.0
        if name not in self.profile["models"]:
            base, source = self._nearest(name)
            scale = (self._macs_at(base, source["models"][base]["image_size"])
                     / self._macs_at(name, cfg.data.image_size))
        entry = source["models"][base]
        label = f"{'measured' if source is self.profile and self.measured else 'reference'} {base}"
        if base != name:
            notes.append(f"not in the profile: the {label} scaled by FLOPs (multiply-adds per image)")
            if _family(base) != _family(name):
                notes.append(f"scaled from {base}, a net of another family and image size: likely optimistic, by "
                             "several times (a small net does not keep a GPU as busy); measure it with "
                             "`python -m launch bench`")
        train = self._at_precision(entry, precision, label, notes) * scale
        per_gpu_batch, run_batch = entry["batch_size"] / entry["world_size"], cfg.data.batch_size / gpus
        if per_gpu_batch != run_batch:
            notes.append(f"{label} ran {per_gpu_batch:g} images per GPU, this run {run_batch:g}: the per-GPU rate "
                         "changes with it")
        measured_eval = entry.get("eval_images_per_s_per_gpu")
        # A job's start-up hardly depends on the net: the measured one of the net the rate comes from.
        startup = entry.get("startup_s") if source is self.profile and self.measured else None
        if measured_eval and entry["precision"] == precision:
            return Rate(train, measured_eval * scale, tuple(notes), eval_measured=True, startup_s=startup)
        return Rate(train, train * self.eval_factor, tuple(notes), startup_s=startup)

    def _at_precision(self, entry: dict, precision: str, label: str, notes: list[str]) -> float:
        if entry["precision"] == precision:
            return float(entry["images_per_s_per_gpu"])
        by_precision = entry.get("by_precision") or {}
        if precision in by_precision:
            return float(by_precision[precision])
        notes.append(f"{label} ran in {entry['precision']}, this run uses {precision}")
        return float(entry["images_per_s_per_gpu"])

    def _nearest(self, name: str) -> tuple[str, dict]:
        """The measured net of `name`'s family closest to it in FLOPs, else the reference's closest."""
        family = _family(name)
        own = [n for n in self.profile["models"] if self.measured and _family(n) == family]
        source = self.profile if own else self.reference
        candidates = own or list(self.reference["models"])
        target = self._macs_at(name, None)
        best = min(candidates, key=lambda n: abs(math.log(self._macs_at(n, None) / target)))
        return best, source

    def _macs_at(self, name: str, image_size: int | None) -> float:
        """Multiply-adds of one image at `image_size` (None: the net's native side): conv cost grows with pixels."""
        spec = get_spec(name)
        if name not in self._macs:
            # Counting a net takes a while: only when the reference does not list it.
            self._macs[name] = measure(spec).macs
        return self._macs[name] * ((image_size or spec.resolution) / spec.resolution) ** 2


def _family(name: str) -> str | None:
    try:
        return get_spec(name).family
    except KeyError:
        return None



"""What one job asks SLURM for: the config's `slurm` section (`pipeline.config.schema.SlurmConfig`, one field per
resource), with the resource flags of the command line applied.

    flags = ResourceFlags({"nodes": 2, "time_minutes": 60}, ("mail-type=END",))   # what a command line gave
    resources = flags.applied_to(cfg.slurm)       # a SlurmConfig: the job's resources
    flags.command_line()                          # ['--nodes', '2', '--time', '60', '--sbatch', 'mail-type=END']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.schema import SlurmConfig

# A resource's flag is its field's name with dashes, but for these two.
FLAG_NAMES = {"time_minutes": "--time", "additional": "--sbatch"}


def flag_name(resource: str) -> str:
    """`--gpus-per-node` for `gpus_per_node`; `--time` for `time_minutes`; `--sbatch` for `additional`."""
    return FLAG_NAMES.get(resource, "--" + resource.replace("_", "-"))


RESOURCES = [f.name for f in dataclasses.fields(SlurmConfig)]  # the section's fields, in order


@dataclass(frozen=True)
class ResourceFlags:
    """The resource flags a command line gave; what it did not give comes from the config's `slurm` section."""

    given: dict[str, Any] = field(default_factory=dict)  # SlurmConfig field -> value (`additional` aside)
    sbatch: tuple[str, ...] = ()  # each `--sbatch KEY=VALUE`, as given

    def applied_to(self, slurm: SlurmConfig) -> SlurmConfig:
        """The resources of a job: `slurm` with the given flags in place of its fields, `--sbatch` options added."""
        additional = dict(slurm.additional)
        for item in self.sbatch:
            key, _, value = item.partition("=")
            additional[key.replace("-", "_")] = value
        return dataclasses.replace(slurm, **self.given, additional=additional)

    def command_line(self) -> list[str]:
        """The flags again, as a command line would give them."""
        flags: list[str] = []
        for name in RESOURCES:
            value = self.given.get(name)
            if name == "additional" or value is None or value is False:
                continue
            flags += [flag_name(name)] if value is True else [flag_name(name), str(value)]
        for item in self.sbatch:
            flags += ["--sbatch", item]
        return flags

"""A run's configuration: the typed schema, loading YAML with `base:` chains and overrides, and the checks made
before a run starts.

- `schema`: one dataclass per section (`run`, `model`, `data`, ... `slurm`), with the paper's CIFAR recipe as
  defaults;
- `loading`: defaults < YAML < `section.key=value` overrides, errors that name the file and the key;
- `checks`: warnings for a config shrunk or moved by hand (milestones past the end, bf16 on a CPU, classes);
- `per_gpu_batch`: what each GPU gets of the global batch, against what the recipe was made for.

`load_config`, `ConfigError`, `ExperimentConfig` and the section classes are importable from here.
"""

from pipeline.config.loading import (
                                     ConfigError,
                                     config_to_dict,
                                     config_to_yaml,
                                     load_config,
                                     loggable_config,
                                     save_config,
)
from pipeline.config.schema import (
                                     CheckpointConfig,
                                     DataConfig,
                                     EngineConfig,
                                     EvalConfig,
                                     ExperimentConfig,
                                     LoggingConfig,
                                     ModelConfig,
                                     OptimConfig,
                                     RunConfig,
                                     ScheduleConfig,
                                     SlurmConfig,
)

__all__ = ["CheckpointConfig", "ConfigError", "DataConfig", "EngineConfig", "EvalConfig", "ExperimentConfig",
           "LoggingConfig", "ModelConfig", "OptimConfig", "RunConfig", "ScheduleConfig", "SlurmConfig",
           "config_to_dict", "config_to_yaml", "load_config", "loggable_config", "save_config"]

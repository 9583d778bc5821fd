"""The typed schema of a run's configuration: one dataclass per section.

Defaults here are the paper's CIFAR-10 recipe; the YAML files in `configs/` override what differs.
Each component receives only its own section. Fields whose value must be one of a few words are
checked in `__post_init__`, which OmegaConf calls when the merged config becomes real objects; there too every
number is checked against its range (`pipeline.config.ranges`, one table for all sections).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from pipeline.config.ranges import check_section

# The paper's testing protocols: one centre view, Table 3's ten crops, Table 4's fully-convolutional scales.
PROTOCOLS = ("center", "tencrop", "multiscale")
# What `logging.wandb_log_model` logs: nothing, the last checkpoint, the best.
WANDB_LOG_MODEL = ("off", "final", "best")


def _one_of(section: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{key}: {value!r} is not one of {', '.join(map(str, choices))}")


@dataclass
class RunConfig:
    """Identity and placement of a run. The run directory is `<out_dir>/<name>`."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    # Bitwise-reproducible kernels (and, on CPU, bitwise-identical resume). Slower on GPU.
    deterministic: bool = False
    device: str = "auto"  # auto: cuda when present, else cpu

    def __post_init__(self) -> None:
        check_section("run", self)
        _one_of("run", "device", self.device, ("auto", "cpu", "cuda"))


@dataclass
class ModelConfig:
    """Which network of the paper to build; see `python -m pipeline.models` for the names."""

    name: str = "cifar_resnet20"
    num_classes: Optional[int] = None  # None: the family's native count (1000 ImageNet, 10 CIFAR)
    # Shortcut option of Table 3; "default" is the paper's choice for that net (A for ResNet-18/34 and
    # CIFAR nets, B for the bottleneck nets).
    shortcut: str = "default"
    # Where a bottleneck block downsamples: on its first 1x1 conv (the paper) or on the 3x3 ("v1.5").
    bottleneck_stride: str = "1x1"
    # Zero-init the last BN of each residual block so every block starts as the identity.
    zero_init_residual: bool = False
    # BN's training statistics over groups of this many images of each GPU's batch ("ghost BN"), each group
    # normalised as a batch of its own; 0: over the GPU's whole batch. Keeps the paper's BN batch (32) when
    # a GPU gets more images than that (the large-batch preset). Evaluation uses the running statistics.
    bn_group_size: int = 0

    def __post_init__(self) -> None:
        check_section("model", self)
        _one_of("model", "shortcut", self.shortcut, ("default", "A", "B", "C"))
        _one_of("model", "bottleneck_stride", self.bottleneck_stride, ("1x1", "3x3"))


@dataclass
class DataConfig:
    """The prepared dataset (a `data_prep` output directory) and how it is fed to the model."""

    root: str = "data/cifar10"  # directory holding manifest.json and the shards
    backend: str = "dali"  # dali | torch | synthetic
    train_split: str = "train"
    eval_split: str = "test"
    batch_size: int = 128  # global mini-batch (the paper's figure), split across ranks
    # Images per GPU the recipe was made for, and so the batch each BN statistic is taken over: the paper's
    # CIFAR recipe ran 128 on 2 GPUs (64 each), its ImageNet recipe 256 on 8 (32 each). Fewer per GPU is
    # warned about (`pipeline.config.per_gpu_batch`); the report lists another BN batch as a departure from the paper.
    recipe_batch_per_gpu: int = 64
    eval_batch_per_gpu: int = 128  # images per GPU per evaluation batch, whatever the number of GPUs
    augmentation: str = "cifar"  # paper | rrc | cifar | none
    image_size: int = 32  # training crop side
    # The paper's ImageNet scale augmentation: shorter side drawn from [min, max].
    resize_min: int = 256
    resize_max: int = 480
    rrc_min_scale: float = 0.08
    pad: int = 4  # CIFAR: zero padding before the random crop
    pca_lighting: float = 0.1  # AlexNet-style lighting noise std; 0 disables
    # per_pixel_mean (the paper): x - the manifest's mean image, no division (CIFAR: the exact 32x32 mean;
    # ImageNet: the 224x224 mean of centre views; views of another size subtract its per-channel average).
    # per_channel: (x - mean) / std per channel, the manifest's statistics.
    normalize: str = "per_pixel_mean"
    shuffle_buffer: int = 4096
    num_threads: int = 4  # DALI CPU threads / torch loader workers per rank (torch: 0 reads in the rank itself)
    # Share of the A100/H100 hardware JPEG decoder in DALI's "mixed" decoder (0..1).
    hw_decoder_load: float = 0.65
    output_dtype: str = "float32"  # float32 | bfloat16

    def __post_init__(self) -> None:
        check_section("data", self)
        _one_of("data", "backend", self.backend, ("dali", "torch", "synthetic"))
        _one_of("data", "augmentation", self.augmentation, ("paper", "rrc", "cifar", "none"))
        _one_of("data", "output_dtype", self.output_dtype, ("float32", "bfloat16"))
        _one_of("data", "normalize", self.normalize, ("per_pixel_mean", "per_channel"))
        if self.resize_min > self.resize_max:
            raise ValueError(f"data.resize_min ({self.resize_min}) exceeds data.resize_max ({self.resize_max})")
        if self.backend == "dali" and self.num_threads == 0:
            raise ValueError("data.num_threads must be at least 1 with data.backend=dali (0 is for the torch loader)")


@dataclass
class OptimConfig:
    """SGD as in the paper."""

    name: str = "sgd"
    lr: float = 0.1  # for `schedule.base_batch_size` images per step (linear scaling rule)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    # The paper decays every parameter; modern recipes exempt BN weights and biases.
    decay_bn_and_bias: bool = True

    def __post_init__(self) -> None:
        check_section("optim", self)
        _one_of("optim", "name", self.name, ("sgd",))


@dataclass
class ScheduleConfig:
    """Learning rate as a pure function of the step (and of what plateau and until_train_error observed)."""

    kind: str = "multistep"  # multistep | plateau | constant
    unit: str = "iteration"  # the unit of `milestones` and `total`: iteration | epoch
    milestones: List[int] = field(default_factory=lambda: [32000, 48000])
    gamma: float = 0.1
    total: int = 64000  # training length, in `unit`s
    # Warm-up: "constant" holds `warmup_lr` for `warmup_iterations`, "linear" ramps from it to lr, and
    # "until_train_error" (ResNet-110's rule) holds it until a logged training error is below
    # `warmup_until_error` (%), or for `warmup_iterations` at most (the cap).
    warmup: str = "none"  # none | constant | linear | until_train_error
    warmup_iterations: int = 0
    warmup_lr: float = 0.01
    warmup_until_error: float = 80.0  # top-1 training error in %, averaged over a `logging.every_steps` window
    # Linear scaling rule: lr is multiplied by global_batch / base_batch_size.
    scale_lr: bool = False
    base_batch_size: int = 256
    # Divide-on-plateau of the validation error.
    plateau_patience: int = 5  # evaluations without improvement before dividing
    plateau_threshold: float = 0.001  # relative improvement that counts
    plateau_min_lr: float = 1e-5

    def __post_init__(self) -> None:
        check_section("schedule", self)
        _one_of("schedule", "kind", self.kind, ("multistep", "plateau", "constant"))
        _one_of("schedule", "unit", self.unit, ("iteration", "epoch"))
        _one_of("schedule", "warmup", self.warmup, ("none", "constant", "linear", "until_train_error"))
        if self.warmup == "until_train_error" and self.warmup_iterations < 1:
            raise ValueError("schedule.warmup=until_train_error needs schedule.warmup_iterations (its cap) of at "
                             f"least 1, got {self.warmup_iterations}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"schedule.milestones must be increasing, got {list(self.milestones)}")


@dataclass
class EngineConfig:
    """How the model is distributed and computed."""

    name: str = "ddp"  # ddp | deepspeed
    precision: str = "fp32"  # fp32 | bf16 | fp16
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0/1/2
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    activation_checkpointing: bool = False  # recompute blocks in backward (the 1202-layer net)
    # The dtype gradients are averaged in across ranks. fp32 (also under bf16: autocast computes in bf16,
    # weights, BN and gradients stay fp32) is what one GPU would compute; bf16 halves the traffic and rounds
    # every gradient to 8 bits of mantissa (needs engine.precision=bf16).
    reduce_dtype: str = "fp32"
    # How long a collective may wait for a rank before the job ends (`pipeline.dist.watch_for_hangs`): during
    # start-up and the first step (compilation, cuDNN's benchmarks, a resume's load), `timeout_minutes`; once
    # a step has run, `hang_timeout_minutes`, so that a hung or killed rank frees the job's GPUs soon.
    timeout_minutes: float = 30.0
    hang_timeout_minutes: float = 10.0

    def __post_init__(self) -> None:
        check_section("engine", self)
        _one_of("engine", "name", self.name, ("ddp", "deepspeed"))
        _one_of("engine", "precision", self.precision, ("fp32", "bf16", "fp16"))
        _one_of("engine", "zero_stage", self.zero_stage, (0, 1, 2))
        _one_of("engine", "reduce_dtype", self.reduce_dtype, ("fp32", "bf16"))
        if self.reduce_dtype == "bf16" and self.precision != "bf16":
            raise ValueError(f"engine.reduce_dtype=bf16 needs engine.precision=bf16, not {self.precision}")


@dataclass
class CheckpointConfig:
    """When checkpoints are taken and how many are kept."""

    every_steps: int = 0  # 0: off
    every_minutes: float = 30.0  # 0: off
    at_epoch_end: bool = True
    keep_last: int = 2
    keep_best: bool = True
    # How often the ranks agree on a stop signal or a time-based save: each check is a collective and a
    # device-to-host copy, which keeps the CPU from running ahead of the GPU. Checks come every
    # `check_every_steps` steps at most, and more often where steps are slow: at least every
    # `check_every_seconds` (never more often than every step), so that a stop is taken, and its checkpoint
    # written, well inside the seconds SLURM gives between SIGTERM and SIGKILL (its KillWait, 30 s by default).
    check_every_steps: int = 10
    check_every_seconds: float = 2.0

    def __post_init__(self) -> None:
        check_section("checkpoint", self)


@dataclass
class LoggingConfig:
    """Console, metrics.jsonl and Weights & Biases."""

    every_steps: int = 50
    wandb_mode: str = "offline"  # online | offline | disabled
    wandb_project: str = "resnet-repro"
    wandb_entity: Optional[str] = None
    wandb_group: Optional[str] = None
    wandb_name: Optional[str] = None  # None: run.name
    wandb_tags: List[str] = field(default_factory=list)
    # How long an online `wandb.init` may try to reach its server. Past it the run continues offline with
    # the same id (sync it later with `wandb sync`), so a dead server costs the job this long, not W&B's 90 s.
    wandb_init_timeout_s: float = 30.0
    # The trained net as a W&B model artifact at the end of a finished training (W&B online or offline): the last
    # checkpoint's export (final), the best's (best), or nothing (off). See pipeline/train/model_artifact.py.
    wandb_log_model: str = "final"  # off | final | best

    def __post_init__(self) -> None:
        check_section("logging", self)
        _one_of("logging", "wandb_mode", self.wandb_mode, ("online", "offline", "disabled"))
        if self.wandb_log_model == "False":  # YAML reads a bare `off` as false, which OmegaConf gives as 'False'
            self.wandb_log_model = "off"
        _one_of("logging", "wandb_log_model", self.wandb_log_model, WANDB_LOG_MODEL)


@dataclass
class EvalConfig:
    """Periodic and final evaluation."""

    every_epochs: int = 1  # 0: only at the end
    every_steps: int = 0  # 0: off; for iteration-based schedules
    protocol: str = "center"  # center | tencrop | multiscale (CIFAR's single 32x32 view is "center")
    resize: int = 256  # shorter side before the centre crop
    scales: List[int] = field(default_factory=lambda: [224, 256, 384, 480, 640])  # Table 4's shorter sides
    layer_responses: bool = False  # record Fig. 7's per-layer response std

    def __post_init__(self) -> None:
        check_section("eval", self)
        _one_of("eval", "protocol", self.protocol, PROTOCOLS)


@dataclass
class SlurmConfig:
    """What a job of this run asks SLURM for (`python -m launch submit`, `sweep`, `reproduce`, ...); the commands'
    resource flags override each field."""

    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: Optional[int] = None  # None: one task per GPU
    cpus_per_task: int = 8
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    mem_gb: Optional[int] = None
    time_minutes: int = 240
    exclusive: bool = False
    max_requeues: int = 20
    signal_delay_s: int = 120  # USR2 this long before the time limit, to checkpoint and requeue
    additional: Dict[str, str] = field(default_factory=dict)  # extra sbatch options

    def __post_init__(self) -> None:
        check_section("slurm", self)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def gpus(self) -> int:
        """Ranks of one job: one per GPU (on CPU, per task)."""
        return self.nodes * self.ntasks_per_node


@dataclass
class ExperimentConfig:
    """A whole run: every section, each with its defaults."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

"""What a run's step and pauses cost on N GPUs over M nodes: the model `launch plan` applies to every run.

A profile measures a GPU's images/s, not the network between GPUs, so the rest is arithmetic on stated
assumptions (each printed by `launch plan` and each an option of it, `Cluster` below; the bandwidths' defaults
are an 8-GPU H100 node's, from configs/throughput/reference.json's `network`, with their source):

- compute per step = images per GPU / the profile's per-GPU images/s (the all-reduce of the profile's own
  run, on one node, counts as part of it);
- gradient reduction per step: the gradients (parameters x 4 bytes, 2 with engine.reduce_dtype=bf16 or
  DeepSpeed's fp16) in a ring through the slowest link it crosses (NVLink within one node; across several, the
  slower of NVLink and the node's network): DDP and DeepSpeed without ZeRO all-reduce them, 2 (N-1)/N x bytes;
  ZeRO 1/2 reduce-scatter them, (N-1)/N x bytes (each rank keeps its slice), then all-gather the updated
  weights after the optimizer's step, (N-1)/N x the weights' bytes. Each bucket adds a fixed latency (DDP
  reduces in 25 MiB buckets, ZeRO in 5M-element ones). One GPU reduces nothing;
- exposed = what of it lengthens the step. DDP and ZeRO 1/2 reduce each bucket while backward goes on
  (backward taken as a fraction of compute), except the last: it is ready only when backward ends, so it always
  shows, behind whatever of the earlier buckets backward could not hide. ZeRO's all-gather waits for the
  optimizer's step, after backward: all of it shows. DeepSpeed without ZeRO reduces after backward: all shows;
- step time = compute + exposed communication;
- a checkpoint blocks training for its snapshot to host memory (weights, SGD momentum and BN buffers); the
  write to disk goes on in the background. Saves: every epoch's end but the last, every_steps, every_minutes
  in the stretches between those (the clock restarts at every save), and the final one;
- a job's start-up (process start, imports, dataset open, model build, the first slow steps, teardown) is
  the profile's measured `startup_s`, paid at every start of a job and once by the report.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from dataclasses import astuple, dataclass, field
from pathlib import Path

from launch.plan.profile import REFERENCE, REPO, load_profile
from pipeline.config import CheckpointConfig, ConfigError, EngineConfig, ModelConfig
from pipeline.config.ranges import AT_LEAST_1, FRACTION
from pipeline.models import build_model

GIGA = 1e9
DDP_BUCKET_BYTES = 25 * 2**20  # torch DDP's bucket_cap_mb=25 (of fp32 gradients, also under a bf16 hook)

NODES_HELP = ("node counts to compare, e.g. --nodes 1 2 4 8. Runs on several GPUs: each count is nodes per run "
              "(x --gpus-per-node GPUs); the table is costed at the first count, and a line per count shows the "
              "step time, the exposed all-reduce, the pauses and the speed-up against 1 node. Runs on one GPU "
              "each (CIFAR): each count is nodes of the cluster, which run more runs at once (--node-gpus each); "
              "the makespan per count is shown. Default: the configs' slurm.nodes, no comparison")


@dataclass(frozen=True)
class Network:
    """The reference node's links, `plan`'s default bandwidths: configs/throughput/reference.json's `network`."""

    node: str
    intra_node_bytes_per_s: float  # all-reduce bus bandwidth among one node's GPUs (NVLink)
    inter_node_bytes_per_s: float  # one node's network, all its adapters together
    source: str
    path: str


@functools.cache
def reference_network(path: Path = REFERENCE) -> Network:
    """The `network` section of the reference profile; ConfigError names the file and key that is wrong."""
    network = load_profile(path).get("network")
    if not isinstance(network, dict):
        raise ConfigError(f"{path}: no 'network' section (the reference node's bandwidths, `plan`'s defaults)")
    rates = {}
    for key in ("intra_node_bandwidth", "inter_node_bandwidth"):
        try:
            rates[key] = parse_bandwidth(str(network.get(key)))
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{path}: network.{key}: {e}") from None
    return Network(str(network.get("node", "")), rates["intra_node_bandwidth"], rates["inter_node_bandwidth"],
                   str(network.get("source", "")), str(path))


@dataclass(frozen=True)
class Cluster:
    """What the profile cannot tell about the machines a table will run on; every field is a `plan` option."""

    intra_node_bytes_per_s: float = field(default_factory=lambda: reference_network().intra_node_bytes_per_s)
    inter_node_bytes_per_s: float = field(default_factory=lambda: reference_network().inter_node_bytes_per_s)
    backward_fraction: float = 2 / 3  # of a step's compute: backward is about twice the forward
    bucket_latency_s: float = 50e-6  # per bucket and step: a collective's launch and its ring's hops
    host_copy_bytes_per_s: float = 10 * GIGA  # device (or CPU) memory to pinned host memory, per GPU
    node_gpus: int = 8  # GPUs in one node, for packing one-GPU runs

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Cluster:
        names = cls.__dataclass_fields__
        cluster = cls(**{n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
        if not 0 <= cluster.backward_fraction <= 1:
            raise ConfigError(f"--backward-fraction must be between 0 and 1, got {cluster.backward_fraction}")
        return cluster

    def describe(self) -> list[str]:
        """The assumptions, as `launch plan` prints them under the table."""
        return [
            "step time = compute (images per GPU / the profile's per-GPU images/s; the profile's own one-node "
            "all-reduce is part of it) + the exposed part of the communication",
            "communication: the gradients (parameters x 4 bytes; 2 with engine.reduce_dtype=bf16) in a ring "
            "through the slowest link crossed, all-reduced (2 (N-1)/N x bytes; DDP, DeepSpeed without ZeRO) or "
            "reduce-scattered, then the updated weights all-gathered ((N-1)/N x bytes each; ZeRO 1/2): within one "
            f"node {bandwidth_text(self.intra_node_bytes_per_s)} (NVLink; --intra-node-bandwidth), across nodes "
            f"{bandwidth_text(self.inter_node_bytes_per_s)} per node (InfiniBand; --inter-node-bandwidth), a ring "
            f"through several nodes at the slower of the two; plus {self.bucket_latency_s * 1e6:g} µs per bucket "
            "(DDP: 25 MiB buckets; ZeRO: 5M elements; --bucket-latency-us)",
            self._bandwidths_source(),
            f"overlap: DDP and ZeRO 1/2 reduce each gradient bucket during backward, taken as "
            f"{self.backward_fraction:.2f} of compute (--backward-fraction), but the last bucket, ready only when "
            "backward ends: exposed are that bucket and what of the others backward does not hide; ZeRO's "
            "all-gather of the weights follows the optimizer's step, all of it exposed; DeepSpeed without ZeRO "
            "reduces after backward, all of it exposed",
            "checkpoints: a save blocks for its snapshot to host memory, (2 x parameters + BN buffers) x 4 bytes "
            f"(weights, SGD momentum) at {bandwidth_text(self.host_copy_bytes_per_s)} (--host-copy-bandwidth), "
            "the write to disk running in the background; saves at checkpoint.at_epoch_end, every_steps, "
            "every_minutes, and the final one",
        ]

    def _bandwidths_source(self) -> str:
        reference = reference_network()
        given = [flag for flag, mine, theirs in (
            ("--intra-node-bandwidth", self.intra_node_bytes_per_s, reference.intra_node_bytes_per_s),
            ("--inter-node-bandwidth", self.inter_node_bytes_per_s, reference.inter_node_bytes_per_s))
            if mine != theirs]
        default = (f"{' and '.join(given)} as given; " if given else "") + "the default bandwidths: "
        return f"{default}{reference.node} [{_in_repo(reference.path)}]. {reference.source}"


def _in_repo(path: str) -> str:
    return str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else path


# --- bandwidths on the command line -----------------------------------------------------------------------------

_BANDWIDTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kMGT]?)(B|b|bit)/s\s*$")
_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_bandwidth(text: str) -> float:
    """Bytes/s from "25GB/s" (bytes) or "200Gb/s" / "200Gbit/s" (bits): the unit is required, since a bare
    number would leave bits and bytes (a factor of 8) to a guess."""
    match = _BANDWIDTH.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a bandwidth: give a number and a unit, e.g. 25GB/s "
                                         "(bytes) or 200Gb/s (bits)")
    value, prefix, unit = match.groups()
    per_s = float(value) * _PREFIX[prefix]
    per_s = per_s if unit == "B" else per_s / 8
    if per_s <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a bandwidth must be positive")
    return per_s


def bandwidth_text(bytes_per_s: float) -> str:
    return f"{bytes_per_s / GIGA:g} GB/s ({bytes_per_s * 8 / GIGA:g} Gb/s)"


def add_scaling_flags(parser: argparse.ArgumentParser) -> None:
    """`plan`'s options for the links between GPUs and the overlap (its --nodes is with the resource flags)."""
    d = Cluster()
    group = parser.add_argument_group("scaling assumptions (printed under the plan)")
    group.add_argument("--intra-node-bandwidth", type=parse_bandwidth, dest="intra_node_bytes_per_s",
                       metavar="RATE", help="all-reduce bus bandwidth among the GPUs of one node, with a unit: GB/s "
                                            f"or Gb/s (default: {bandwidth_text(d.intra_node_bytes_per_s)}, an H100 "
                                            "node's NVLink, configs/throughput/reference.json)")
    group.add_argument("--inter-node-bandwidth", type=parse_bandwidth, dest="inter_node_bytes_per_s",
                       metavar="RATE", help="network bandwidth of one node (all its adapters), for runs over several "
                                            f"nodes, e.g. 800Gb/s (default: {bandwidth_text(d.inter_node_bytes_per_s)}"
                                            ", an H100 node's 8 x 400 Gb/s InfiniBand)")
    group.add_argument("--backward-fraction", type=FRACTION.parse_float, metavar="F",
                       help="the share of a step's compute that backward takes, during which DDP's all-reduce is "
                            f"hidden (default: {d.backward_fraction:.2f})")
    group.add_argument("--bucket-latency-us", type=_microseconds, dest="bucket_latency_s", metavar="US",
                       help="fixed cost of each gradient bucket's all-reduce per step, in microseconds "
                            f"(default: {d.bucket_latency_s * 1e6:g})")
    group.add_argument("--host-copy-bandwidth", type=parse_bandwidth, dest="host_copy_bytes_per_s", metavar="RATE",
                       help="how fast a checkpoint's snapshot reaches host memory, the part of a save that blocks "
                            f"training (default: {bandwidth_text(d.host_copy_bytes_per_s)})")
    group.add_argument("--node-gpus", type=AT_LEAST_1.parse_int, metavar="G",
                       help="GPUs in one node of the cluster, for tables whose runs use one GPU each: how many of "
                            f"them a node runs at once (default: {d.node_gpus})")


def _microseconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a latency cannot be negative: {text}")
    return value * 1e-6


# --- the model's size -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSize:
    params: int
    buffer_bytes: int  # BN's running statistics (and its int64 step counters)

    def gradient_bytes(self, engine: EngineConfig) -> int:
        """What one all-reduce moves: fp32 gradients, bf16 with engine.reduce_dtype=bf16 or DeepSpeed's fp16."""
        half = engine.reduce_dtype == "bf16" or (engine.name == "deepspeed" and engine.precision == "fp16")
        return self.params * (2 if half else 4)

    @property
    def state_bytes(self) -> int:
        """A checkpoint's snapshot: fp32 weights and SGD momentum (both kept in fp32 under bf16), BN buffers."""
        return 2 * 4 * self.params + self.buffer_bytes

    def weight_bytes(self, engine: EngineConfig) -> int:
        """What ZeRO's all-gather of the updated weights moves: the module's weights, fp32 but in DeepSpeed's fp16."""
        return self.params * (2 if engine.precision == "fp16" else 4)

    def bucket_elements(self, engine: EngineConfig) -> int:
        """Gradients per bucket: DDP's 25 MiB of fp32 gradients (also under a bf16 hook), ZeRO's 5M elements, and
        DeepSpeed without ZeRO one flat all-reduce of all of them after backward."""
        if engine.name == "deepspeed":
            if not engine.zero_stage:
                return self.params
            from pipeline.engine.deepspeed_engine import ZERO_BUCKET_ELEMENTS  # noqa: PLC0415 - the engine loads torch

            return ZERO_BUCKET_ELEMENTS
        return DDP_BUCKET_BYTES // 4

    def buckets(self, engine: EngineConfig) -> int:
        return max(1, math.ceil(self.params / self.bucket_elements(engine)))

    def last_bucket_share(self, engine: EngineConfig) -> float:
        """The share of the gradients in the last bucket, the one reduced after backward: buckets fill in the
        order gradients are ready, so the last holds what is left after the full ones (the first layers')."""
        return (self.params - (self.buckets(engine) - 1) * self.bucket_elements(engine)) / self.params


def model_size(model: ModelConfig) -> ModelSize:
    """Parameters and buffer bytes of the net a `model` section builds (counted on the meta device: no memory)."""
    return _model_size(astuple(model))


@functools.cache
def _model_size(fields: tuple) -> ModelSize:
    import torch  # noqa: PLC0415 - counting parameters builds a net; parsing `plan`'s flags must not


    with torch.device("meta"):
        net = build_model(ModelConfig(*fields))
    return ModelSize(sum(p.numel() for p in net.parameters()),
                     sum(b.numel() * b.element_size() for b in net.buffers()))


# --- a step -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepTime:
    compute_s: float
    communication_s: float  # the gradients' reduction (and ZeRO's all-gather) with their latencies, hidden or not
    exposed_s: float  # the part of it that lengthens the step

    @property
    def total_s(self) -> float:
        return self.compute_s + self.exposed_s


def ring_seconds(nbytes: float, passes: int, gpus: int, nodes: int, cluster: Cluster) -> float:
    """`passes` trips of `nbytes` round a ring of `gpus` GPUs on `nodes` nodes, (N-1)/N x bytes each (2 for an
    all-reduce, 1 for a reduce-scatter or an all-gather), through the slowest link it crosses: NVLink within a
    node; a ring through several nodes crosses NVLink and the nodes' network both. One GPU moves nothing."""
    if gpus <= 1:
        return 0.0
    bandwidth = cluster.intra_node_bytes_per_s
    if nodes > 1:
        bandwidth = min(bandwidth, cluster.inter_node_bytes_per_s)
    return passes * (gpus - 1) / gpus * nbytes / bandwidth


def run_step(cfg, gpus: int, nodes: int, images_per_s_per_gpu: float, cluster: Cluster) -> StepTime:
    """The step time of the run `cfg` on `gpus` GPUs over `nodes` nodes at the profile's per-GPU rate: compute,
    then what of the communication backward does not hide (launch.plan.scaling's docstring: the model)."""
    engine, size = cfg.engine, model_size(cfg.model)
    compute = cfg.data.batch_size / gpus / images_per_s_per_gpu
    if gpus <= 1:
        return StepTime(compute, 0.0, 0.0)
    zero = engine.name == "deepspeed" and bool(engine.zero_stage)
    latency, buckets = cluster.bucket_latency_s, size.buckets(engine)
    # ZeRO reduce-scatters the gradients (each rank keeps the slice it updates); the others all-reduce them.
    passes = 1 if zero else 2
    reduce = ring_seconds(size.gradient_bytes(engine), passes, gpus, nodes, cluster) + buckets * latency
    if engine.name == "deepspeed" and not zero:
        return StepTime(compute, reduce, reduce)  # one all-reduce after backward: nothing overlaps it
    last = ring_seconds(size.gradient_bytes(engine) * size.last_bucket_share(engine), passes, gpus, nodes,
                        cluster) + latency
    gather = ring_seconds(size.weight_bytes(engine), 1, gpus, nodes, cluster) + buckets * latency if zero else 0.0
    hidden_behind = cluster.backward_fraction * compute
    exposed = max(0.0, reduce - last - hidden_behind) + last + gather
    return StepTime(compute, reduce + gather, exposed)


# --- pauses -----------------------------------------------------------------------------------------------------

def checkpoint_saves(checkpoint: CheckpointConfig, total_steps: int, steps_per_epoch: int, step_s: float) -> float:
    """How many checkpoints training writes, as pipeline.train decides them.

    Every epoch's end but the last (`at_epoch_end`), every `every_steps` steps, `every_minutes` in the stretches
    between those saves (its clock restarts at any save, so a run saving every epoch of 20 minutes never
    saves by a 30-minute clock), and the final save after the final evaluation.
    """
    at_epoch_end = (total_steps - 1) // steps_per_epoch if checkpoint.at_epoch_end else 0
    by_steps = total_steps // checkpoint.every_steps if checkpoint.every_steps else 0
    by_minutes = 0.0
    if checkpoint.every_minutes:
        stretches = [n for n in (steps_per_epoch if checkpoint.at_epoch_end else 0, checkpoint.every_steps) if n]
        stretch = min([*stretches, total_steps])
        by_minutes = total_steps / stretch * math.floor(stretch * step_s / (60 * checkpoint.every_minutes))
    return at_epoch_end + by_steps + by_minutes + 1


def snapshot_seconds(size: ModelSize, cluster: Cluster) -> float:
    """The blocking part of one save: the training state copied to host memory."""
    return size.state_bytes / cluster.host_copy_bytes_per_s

"""Engines for real: DDP and DeepSpeed over two gloo processes under torchrun, on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline.config.schema import EngineConfig
from pipeline.dist import free_port
from pipeline.dist.exit_codes import USAGE
from pipeline.engine.common import checkpoint_blocks
from pipeline.engine.deepspeed_engine import (
    ZERO_BUCKET_ELEMENTS,
    DeepSpeedTooOld,
    check_deepspeed_version,
    deepspeed_config,
)
from pipeline.models import build
from tests.support import REPO, TESTS

WORKER = TESTS / "workers" / "engine_worker.py"


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
# DDP with its gradients averaged in bf16 (our communication hook, which gloo runs too); DeepSpeed in fp32.
@pytest.mark.parametrize("engine, precision, reduce_dtype", [("ddp", "bf16", "bf16"), ("deepspeed", "fp32", "fp32")])
def test_two_rank_training_learns_and_ranks_agree(tmp_path, engine, precision, reduce_dtype):
    torchrun(2, str(WORKER), str(tmp_path), engine, precision, reduce_dtype)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
        assert last < 0.6 * first, f"{engine}: loss did not fall: {r['losses']}"
    # Gradients are averaged over ranks, so both hold the same weights after every step.
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)


def test_deepspeed_config_follows_engine_section():
    ds = deepspeed_config(EngineConfig(name="deepspeed", precision="bf16", zero_stage=2), micro_batch=32, world_size=4)
    assert ds["train_batch_size"] == 128 and ds["train_micro_batch_size_per_gpu"] == 32
    # bf16 is DDP's recipe: torch autocast over fp32 weights and BN, gradients reduced in fp32 (no layer is
    # "lower precision safe"); not DeepSpeed's bf16 module.
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert "bf16" not in ds and "fp16" not in ds and "data_types" not in ds
    # ZeRO reduces in buckets of a few per ResNet-50, overlapped with backward.
    # compute_grad_norm off: the norm feeds clipping alone (none), and its inf/NaN check reads it every step.
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": ZERO_BUCKET_ELEMENTS,
                                       "allgather_bucket_size": ZERO_BUCKET_ELEMENTS, "compute_grad_norm": False}
    assert 25_557_032 / ZERO_BUCKET_ELEMENTS > 4  # ResNet-50's parameters: more than 4 buckets
    bf16_reduce = deepspeed_config(EngineConfig(name="deepspeed", precision="bf16", reduce_dtype="bf16"), 32, 4)
    assert bf16_reduce["torch_autocast"]["lower_precision_safe_modules"] == [
        "torch.nn.modules.conv.Conv2d", "torch.nn.modules.linear.Linear"]
    assert bf16_reduce["zero_optimization"] == {"stage": 0} and bf16_reduce["communication_data_type"] == "bf16"
    with pytest.raises(ValueError, match="engine.reduce_dtype=bf16 needs engine.precision=bf16"):
        EngineConfig(reduce_dtype="bf16")


# One process, no launcher: a DeepSpeed engine with engine.compile=true is compiled (torch.compile runs lazily,
# at the first step, which is not taken here: on CPU that would need a C++ compiler and a minute).
_DEEPSPEED_COMPILE = """
import torch
from pipeline import dist
from pipeline.config import load_config
from pipeline.dist import dist_info_from_env, with_free_port
from pipeline.engine import build_engine
from pipeline.models import build
info = with_free_port(dist_info_from_env())
cfg = load_config(None, ["engine.name=deepspeed", "engine.compile=true"])
dist.init_process_group(info, "cpu", timeout_minutes=5)
engine = build_engine(cfg.engine, build("cifar_resnet8"), cfg.optim, 0.1, info, torch.device("cpu"), micro_batch=4)
print("compiled" if engine.engine.is_compiled else "not compiled")
dist.destroy_process_group()
"""


# One process, no launcher: the host syncs of DeepSpeed's training steps, counted as the evaluation's are.
_DEEPSPEED_SYNCS = """
import sys
import torch
from pipeline import dist
from pipeline.config import load_config
from pipeline.dist import dist_info_from_env, with_free_port
from pipeline.engine import build_engine
from pipeline.models import build
from tests.support.host_syncs import HostSyncs
info = with_free_port(dist_info_from_env())
cfg = load_config(None, ["engine.name=deepspeed", "engine.zero_stage=" + sys.argv[1], "engine.precision=bf16"])
dist.init_process_group(info, "cpu", timeout_minutes=5)
engine = build_engine(cfg.engine, build("cifar_resnet8"), cfg.optim, 0.1, info, torch.device("cpu"), micro_batch=4)
images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
engine.train_step(images, labels)  # the first step builds what later ones reuse
with HostSyncs() as syncs:
    for _ in range(3):
        engine.train_step(images, labels)
print("syncs", syncs.total)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_a_deepspeed_zero_step_in_bf16_makes_no_host_sync(zero_stage):
    """The loop's rule: no host sync per step (a GPU's stream would wait). DeepSpeed's ZeRO 1/2 read the global
    gradient norm every step (1 sync a step, `bool(tensor.any())`) until its computation was turned off."""
    proc = subprocess.run([sys.executable, "-c", _DEEPSPEED_SYNCS, str(zero_stage)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["syncs", "0"], proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize(("version", "refused"), [("0.16.9", True), ("0.17.1", True), ("0.17.2", False),
                                                  ("0.19.8", False), ("0.20.0+cu124", False), ("0.17.2rc1", False)])
def test_a_deepspeed_without_torch_autocast_is_refused_in_one_line(version, refused):
    if refused:
        with pytest.raises(DeepSpeedTooOld, match=rf"DeepSpeed {version} is older than 0.17.2.*deepspeed>=0.17.2"):
            check_deepspeed_version(version)
    else:
        check_deepspeed_version(version)
    assert DeepSpeedTooOld.exit_code == USAGE


@pytest.mark.slow
def test_deepspeed_honours_engine_compile():
    proc = subprocess.run([sys.executable, "-c", _DEEPSPEED_COMPILE], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.split()[-1:] == ["compiled"], proc.stdout + proc.stderr[-3000:]


def test_activation_checkpointing_gives_the_same_gradients_and_bn_statistics():
    torch.manual_seed(0)
    plain, ckpt = build("cifar_resnet14"), build("cifar_resnet14")
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_blocks(ckpt)
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # parameter names unchanged
    x = torch.randn(4, 3, 32, 32)
    plain(x).square().sum().backward()
    ckpt(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    # The recomputation in backward leaves BN's running statistics as one forward pass left them.
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(a, b), name
    assert all(int(b) == 1 for name, b in ckpt.named_buffers() if name.endswith("num_batches_tracked"))

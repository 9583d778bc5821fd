"""Engines for real: DDP and DeepSpeed over two gloo processes under torchrun, on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.dist import free_port
from pipeline.config_schema import EngineConfig
from pipeline.engine import checkpoint_blocks, deepspeed_config
from pipeline.models import build

WORKER = Path(__file__).parent / "workers" / "engine_worker.py"


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_two_rank_training_learns_and_ranks_agree(tmp_path, engine):
    torchrun(2, str(WORKER), str(tmp_path), engine, "fp32")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
        assert last < 0.6 * first, f"{engine}: loss did not fall: {r['losses']}"
    # Gradients are averaged over ranks, so both hold the same weights after every step.
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)


def test_deepspeed_config_follows_engine_section():
    ds = deepspeed_config(EngineConfig(name="deepspeed", precision="bf16", zero_stage=2), micro_batch=32, world_size=4)
    assert ds["train_batch_size"] == 128 and ds["train_micro_batch_size_per_gpu"] == 32
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


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

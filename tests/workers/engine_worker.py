"""Run under torchrun by tests/pipeline/engine/test_engine.py: a few steps of a small CIFAR ResNet on a learnable
toy task.

Writes `<out>/rank<r>.json` with the losses and a checksum of the final weights.
"""

import json
import sys
from pathlib import Path

import torch

from pipeline import dist
from pipeline.config import load_config
from pipeline.dist import dist_info_from_env
from pipeline.engine import build_engine
from pipeline.models import build


def main(out: str, engine_name: str, precision: str, reduce_dtype: str = "fp32") -> None:
    info = dist_info_from_env()
    cfg = load_config(None, [f"engine.name={engine_name}", f"engine.precision={precision}",
                             f"engine.reduce_dtype={reduce_dtype}"])
    dist.init_process_group(info, "cpu", timeout_minutes=5)
    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's)
    model = build("cifar_resnet8", num_classes=2)
    engine = build_engine(cfg.engine, model, cfg.optim, 0.05, info, torch.device("cpu"), micro_batch=16)
    gen = torch.Generator().manual_seed(100 + info.rank)  # each rank its own data
    losses = []
    for _ in range(25):
        labels = torch.randint(0, 2, (16,), generator=gen)
        images = torch.randn(16, 3, 16, 16, generator=gen) * 0.5 + labels.view(-1, 1, 1, 1).float()
        loss, _ = engine.train_step(images, labels)
        losses.append(float(loss))
    checksum = float(sum(p.detach().double().sum() for p in engine.module.parameters()))
    Path(out, f"rank{info.rank}.json").write_text(json.dumps({"losses": losses, "checksum": checksum}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

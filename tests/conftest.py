"""Session fixtures shared by the integration tests."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    """scikit-learn's real digits in CIFAR-10's format, sharded by data_prep: 1,500 train, 297 test."""
    root = tmp_path_factory.mktemp("digits")
    for args in (["synth", "--kind", "cifar10", "--out", str(root / "raw")],
                 ["cifar10", "--src", str(root / "raw" / "cifar-10-batches-py"), "--out", str(root / "shards"),
                  "--no-progress"]):
        subprocess.run([sys.executable, "-m", "data_prep", *args], check=True, cwd=REPO, capture_output=True)
    return root / "shards"


@pytest.fixture(scope="session")
def trained_digits(digits_dataset, tmp_path_factory) -> tuple:
    """The demo's run trained to its end on 2 DDP ranks: (its run directory, the training's output). Evaluated in
    batches of 40 per rank, so that every rank of a 3-rank evaluation has several. Tests that change the run
    directory work on a copy. W&B off: this is what the net learns; W&B offline is the stop and resume tests'."""
    from tests.support.training import train

    out = tmp_path_factory.mktemp("trained")
    log = train(2, [f"data.root={digits_dataset}", f"run.out_dir={out}", "data.eval_batch_per_gpu=40",
                    "logging.wandb_mode=disabled"])
    return out / "digits-resnet14", log


@pytest.fixture(scope="session")
def imagenet_shards(tmp_path_factory) -> Path:
    """A real-format ILSVRC tree of scikit-image photos (4 classes), sharded by data_prep: 19 train, 5 val images
    (data_prep's quirks planted in the tree are rejected), with the 224x224 mean image of their centre views."""
    root = tmp_path_factory.mktemp("imagenet")
    for args in (["synth", "--kind", "imagenet", "--classes", "4", "--per-class", "4", "--val-per-class", "1",
                  "--long-side", "80", "120", "--out", str(root / "raw")],
                 ["imagenet", "--src", str(root / "raw"), "--out", str(root / "shards"), "--workers", "1",
                  "--no-progress", "--no-fsync"]):
        subprocess.run([sys.executable, "-m", "data_prep", *args], check=True, cwd=REPO, capture_output=True)
    return root / "shards"

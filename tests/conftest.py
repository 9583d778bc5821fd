"""Session fixtures shared by the integration tests."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    """scikit-learn's real digits in CIFAR-10's format, sharded by data_prep: 1,500 train, 297 test."""
    root = tmp_path_factory.mktemp("digits")
    for args in (["synth", "--kind", "cifar10", "--out", str(root / "raw")],
                 ["cifar10", "--src", str(root / "raw" / "cifar-10-batches-py"), "--out", str(root / "shards"),
                  "--no-progress"]):
        subprocess.run([sys.executable, "-m", "data_prep", *args], check=True, cwd=REPO, capture_output=True)
    return root / "shards"

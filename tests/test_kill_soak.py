"""The kill soak, short: 5 interruptions, one of each kind (a rank SIGKILLed; USR2 and SIGTERM to every process of
the run, W&B's service included; every process killed and the newest checkpoint cut in half; a second start of the
same command, refused by the run's lock), resumed, bitwise.

The recorded soak (K=20 DDP, K=10 DeepSpeed) is `benchmarks/kill_soak.py`; this runs the same script.
"""

from __future__ import annotations

import subprocess
import sys

from tests.train_support import REPO, env


def test_five_interruptions_of_every_kind_resume_to_identical_weights(digits_dataset, tmp_path):
    report = tmp_path / "kill_soak.md"
    proc = subprocess.run([sys.executable, "benchmarks/kill_soak.py", "--engines", "ddp:5", "--data",
                           str(digits_dataset), "--out", str(report)], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = next(line for line in report.read_text().splitlines() if line.startswith("| ddp |"))
    # engine | interruptions | kill-rank / usr2 / sigterm / truncate / second-start | finished | identical |
    # second starts refused | damaged checkpoints named | left behind
    assert [cell.strip() for cell in summary.split("|")[1:9]] == ["ddp", "5", "1 / 1 / 1 / 1 / 1", "yes", "yes", "yes",
                                                                 "yes", "0"]

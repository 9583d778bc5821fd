"""The kill soak, short: 7 interruptions, one of each kind (a rank SIGKILLed; USR2 and SIGTERM to every process of
the run, W&B's service included; every process killed and the newest checkpoint cut in half; a second start of the
same command, refused by the run's lock; every process killed and half a record appended to metrics.jsonl; a rank
SIGSTOPped, the job ending itself with exit 8), resumed, bitwise (weights and optimizer state).

The recorded soak (K=20 DDP, K=10 DeepSpeed) is `benchmarks/kill_soak.py`; this runs the same script.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.run.logger import read_metrics
from tests.support import REPO
from tests.support.training import assert_bitwise_equal, env, final_state
from tests.support.wandb_offline import offline_runs


def test_seven_interruptions_of_every_kind_resume_to_identical_weights(digits_dataset, tmp_path):
    report = tmp_path / "kill_soak.md"
    proc = subprocess.run([sys.executable, "benchmarks/kill_soak.py", "--engines", "ddp:7", "--data",
                           str(digits_dataset), "--out", str(report), "--keep", str(tmp_path)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = next(line for line in report.read_text().splitlines() if line.startswith("| ddp |"))
    # engine | interruptions | kill-rank / usr2 / sigterm / truncate / second-start / torn-metrics / sigstop-rank |
    # finished | identical | second starts refused | damaged checkpoints named | torn lines warned of | stopped
    # ranks: exit 8 | left behind
    assert [cell.strip() for cell in summary.split("|")[1:11]] == [
        "ddp", "7", "1 / 1 / 1 / 1 / 1 / 1 / 1", "yes", "yes", "yes", "yes", "yes", "yes", "0"]
    sigstop = next(line for line in report.read_text().splitlines() if "| sigstop-rank |" in line)
    assert [cell.strip() for cell in sigstop.split("|")][-3:-1] == ["8", "0"]  # exit code, left behind

    # What the run left behind after five interruptions: every step logged once, in order, in metrics.jsonl and in
    # W&B (one run id; what a killed start's W&B service lost, a later start sent again); the damaged checkpoint
    # named as an event; no lock.
    run_dir = tmp_path / "runs" / "ddp-soaked" / "run"
    total = json.loads(next(line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                            if '"start"' in line))["total_steps"]
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == list(range(1, total + 1))
    # The soak's "identical" compares the final weights; what training would go on from must be equal too: the
    # optimizer state (SGD's momentum) of the last checkpoint, against the uninterrupted run's.
    whole = tmp_path / "runs" / "ddp-whole" / "run"
    assert_bitwise_equal(final_state(whole, total), final_state(run_dir, total), "weights and optimizer state")
    runs = offline_runs(run_dir)
    assert len({r.run_id for r in runs if r.run_id}) == 1
    sent = [[row["_step"] for row in r.history if "loss" in row] for r in runs]
    assert all(steps == sorted(set(steps)) for steps in sent) and set().union(*sent) == set(range(1, total + 1))
    damaged = [m for m in read_metrics(run_dir) if str(m.get("event")).startswith("warning: checkpoint")]
    assert len(damaged) >= 1 and "is damaged and was not used" in damaged[0]["event"]
    assert not (run_dir / "run.lock").exists()

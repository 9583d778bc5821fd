"""The kill soak, short: 4 interruptions of one run, one of each of these kinds: a rank SIGKILLed; USR2 and SIGTERM
to every process of the run, W&B's service included; every process killed and half a record appended to
metrics.jsonl. Resumed after each, the run ends bitwise equal to an uninterrupted one (weights and optimizer state),
every step logged once (W&B offline).

The soak's other three kinds are tested where they cost less: a second start refused by the run's lock, its lock,
config and W&B runs untouched (`test_local`'s Ctrl-C test); a damaged newest checkpoint named and passed over, on
the console and as an event (`test_train`'s DeepSpeed resume); a SIGSTOPped rank, the job ended with exit 8 and
nothing left behind once torch's agent has ended the stopped rank (`test_local`'s hang test). The recorded soak
(K=20 DDP, K=10 DeepSpeed, all seven kinds) is `benchmarks/kill_soak.py`; this runs the same script.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.run.logger import read_metrics
from tests.support import REPO
from tests.support.training import assert_bitwise_equal, env, final_state
from tests.support.wandb_offline import offline_runs

ACTIONS = ("kill-rank", "usr2", "sigterm", "torn-metrics")


def test_four_interruptions_of_each_kind_resume_to_identical_weights(digits_dataset, tmp_path):
    report = tmp_path / "kill_soak.md"
    proc = subprocess.run([sys.executable, "benchmarks/kill_soak.py", "--engines", f"ddp:{len(ACTIONS)}",
                           "--actions", ",".join(ACTIONS), "--data", str(digits_dataset), "--out", str(report),
                           "--keep", str(tmp_path)], cwd=REPO, env=env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = report.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| engine |"))
    summary = next(line for line in lines if line.startswith("| ddp |"))
    cells = dict(zip((c.strip() for c in header.split("|")[1:-1]), (c.strip() for c in summary.split("|")[1:-1])))
    assert cells["interruptions"] == "4"
    assert cells["kill-rank / usr2 / sigterm / truncate / second-start / torn-metrics / sigstop-rank"] == \
        "1 / 1 / 1 / 0 / 0 / 1 / 0"
    assert (cells["finished"], cells["final weights identical"], cells["torn lines cut and warned of"],
            cells["processes left behind"]) == ("yes", "yes", "yes", "0"), cells

    # What the run left behind after the interruptions: every step logged once, in order, in metrics.jsonl and in
    # W&B (one run id; what a killed start's W&B service lost, a later start sent again); no lock.
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
    assert not (run_dir / "run.lock").exists()

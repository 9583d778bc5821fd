"""Online W&B with no reachable server: the run gives up within `logging.wandb_init_timeout_s`, says so,
and continues offline under the same run id, so training goes on and the files can be synced later.

Real wandb against a closed local port (nothing is mocked). Each run is a fresh process, so W&B's
process-wide state and the WANDB_* variables stay out of the other tests.
"""

import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.run.layout import RunDir
from pipeline.run.logger import read_metrics
from tests.support import REPO
from tests.support.training import env, small_run, train
from tests.support.wandb_offline import offline_runs

TIMEOUT_S = 5
SLACK_S = 60  # a busy 2-core machine; without the timeout W&B waits ~98 s and then raises


@pytest.fixture
def dead_server(monkeypatch) -> str:
    """A W&B server URL on a local port that nothing listens on, with a plausible (fake) API key."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 3)  # 48 characters: looks real, is not
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return url


def test_init_timeout_defaults_to_30_s_and_must_be_positive():
    assert load_config(None, []).logging.wandb_init_timeout_s == 30.0
    for bad in ("0", "-5"):
        with pytest.raises(ConfigError, match="wandb_init_timeout_s must be positive"):
            load_config(None, [f"logging.wandb_init_timeout_s={bad}"])


ONLINE = ["logging.wandb_mode=online", f"logging.wandb_init_timeout_s={TIMEOUT_S}"]

# The job dies after step 4 and is requeued from step 2: both starts fail to reach the server.
LOGGER_SCRIPT = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from pipeline.config import load_config, loggable_config
    from pipeline.run.logger import make_logger

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config(None, overrides)
    first = make_logger(True, run_dir, cfg.logging, "demo", loggable_config(cfg))
    for step in range(1, 5):
        first.log({"loss": 1.0 / step}, step=step, console=False)
    first.close()
    second = make_logger(True, run_dir, cfg.logging, "demo", loggable_config(cfg), resume_step=2)
    for step in range(3, 7):
        second.log({"loss": 1.0 / step}, step=step, console=False)
    second.close()
""")


# A parent process that already runs W&B's service passes it on (WANDB_SERVICE) to its children.
PARENT_SCRIPT = textwrap.dedent("""
    import subprocess, sys
    import wandb

    wandb.setup()
    sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))
""")


@pytest.mark.parametrize("service", ["own", "parents"])
def test_logger_gives_up_on_unreachable_server_and_keeps_the_run_offline(dead_server, tmp_path, monkeypatch,
                                                                          service):
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # a W&B service of this test process stays out
    command = [sys.executable, "-c", LOGGER_SCRIPT, str(tmp_path), *ONLINE]
    if service == "parents":
        command[1:1] = ["-c", PARENT_SCRIPT]
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env(),
                          timeout=2 * (TIMEOUT_S + SLACK_S) + 60)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert elapsed < 2 * (TIMEOUT_S + SLACK_S), f"two starts took {elapsed:.0f} s"

    warnings = [line for line in out.splitlines() if dead_server in line and "wandb sync" in line]
    assert len(warnings) == 2, out[-6000:]  # one clear line per start
    assert f"{tmp_path / 'wandb'}" in warnings[0] and "offline" in warnings[0]

    run_id = RunDir(tmp_path).wandb_id.read_text()
    runs = offline_runs(tmp_path)
    assert [r.run_id for r in runs] == [run_id, run_id]  # the same W&B run, to sync later
    assert [row["_step"] for r in runs for row in r.history] == [1, 2, 3, 4, 5, 6]  # nothing sent twice
    assert [row["loss"] for row in runs[0].history] == [1.0, 0.5, 1.0 / 3, 0.25]
    assert "0123456789abcdef" not in json.dumps([r.config for r in runs]) + out  # the key is never logged
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_rank_training_finishes_offline_when_server_unreachable(dead_server, digits_dataset, tmp_path,
                                                                   monkeypatch):
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    started = time.monotonic()
    out = train(2, small_run(digits_dataset, tmp_path, *ONLINE, "schedule.total=8", "schedule.milestones=[6]",
                             "checkpoint.every_steps=4"))
    elapsed = time.monotonic() - started
    print(f"training took {elapsed:.1f} s")
    assert elapsed < TIMEOUT_S + SLACK_S + 120, f"training took {elapsed:.0f} s"  # 8 steps take well under 120 s
    run_dir = tmp_path / "t"
    warning = next(line for line in out.splitlines() if dead_server in line and "wandb sync" in line)
    assert str(run_dir / "wandb") in warning

    (run,) = offline_runs(run_dir)
    assert run.run_id == RunDir(run_dir).wandb_id.read_text()
    logged = [row["_step"] for row in run.history if "loss" in row]
    assert logged == [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [2, 4, 6, 8]
    assert json.loads((run_dir / "results.json").read_text())["train"]["samples"] == 297  # training finished

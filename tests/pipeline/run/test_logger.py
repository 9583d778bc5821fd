"""Metrics: JSONL mirror, offline W&B read back from its files, one run id across restarts, no secrets."""

from pathlib import Path

from pipeline.config import load_config, loggable_config
from pipeline.config.schema import LoggingConfig
from pipeline.run.logger import NullLogger, make_logger, read_metrics
from tests.support.wandb_offline import offline_runs


def test_resumed_run_continues_one_wandb_run_with_increasing_steps(tmp_path):
    cfg = load_config(None, ["logging.wandb_mode=offline", "slurm.additional={api_key: s3cr3t}"])
    config = loggable_config(cfg)
    first = make_logger(True, tmp_path, cfg.logging, "demo", config)
    for step in range(1, 6):
        first.log({"loss": 1.0 / step, "lr": 0.1}, step=step, console=False)
    first.close()
    # The job died after step 5; its last checkpoint was at step 3. The restart redoes 4 and 5.
    second = make_logger(True, tmp_path, cfg.logging, "demo", config, resume_step=3)
    assert second.run_id == first.run_id
    for step in range(4, 9):
        second.log({"loss": 1.0 / step, "lr": 0.01}, step=step, console=False)
    second.close()

    runs = offline_runs(tmp_path)
    assert len(runs) == 2 and {r.run_id for r in runs} == {first.run_id}
    steps = [row["_step"] for r in runs for row in r.history]
    assert steps == list(range(1, 9))  # strictly increasing across the restart, nothing sent twice
    assert all("loss" in row and "lr" in row for r in runs for row in r.history)
    assert runs[0].config["optim"]["lr"] == 0.1
    assert "s3cr3t" not in repr([r.config for r in runs])

    local = read_metrics(tmp_path)
    assert [r["step"] for r in local] == list(range(1, 9))
    assert [r["lr"] for r in local] == [0.1] * 3 + [0.01] * 5  # the record follows the resumed trajectory


def test_records_lost_with_a_killed_wandb_service_are_sent_again_by_the_next_start(tmp_path, capfd):
    """SLURM's SIGTERM ends W&B's service with the job: one warning, training's records kept, nothing lost in W&B."""
    import os
    import signal
    import time

    from launch.submit.local import child_processes

    cfg = load_config(None, ["logging.wandb_mode=offline"])
    first = make_logger(True, tmp_path, cfg.logging, "demo", loggable_config(cfg))
    first.log({"loss": 1.0}, step=1, console=False)
    services = [pid for pid in child_processes(os.getpid())
                if b"wandb-core" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(services) == 1
    os.kill(services[0], signal.SIGTERM)
    while Path(f"/proc/{services[0]}").exists() and Path(f"/proc/{services[0]}/stat").read_text().split()[2] != "Z":
        time.sleep(0.01)  # gone (or a zombie): W&B's next call fails
    for step in (2, 3):
        first.log({"loss": 1.0 / step}, step=step, console=False)
    first.close()  # no exception, and no traceback at exit from W&B's own hooks
    err = capfd.readouterr().err
    assert err.count("warning: W&B stopped working at step 2") == 1 and "Traceback" not in err
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3]

    second = make_logger(True, tmp_path, cfg.logging, "demo", loggable_config(cfg), resume_step=3)
    second.log({"loss": 0.25}, step=4, console=False)
    second.close()
    runs = offline_runs(tmp_path)
    assert len({r.run_id for r in runs if r.run_id}) == 1
    assert [row["_step"] for row in runs[-1].history if "loss" in row] == [1, 2, 3, 4]  # sent again, then live


def test_non_primary_ranks_log_nothing(tmp_path):
    logger = make_logger(False, tmp_path, LoggingConfig(wandb_mode="offline"), "x", {})
    assert isinstance(logger, NullLogger)
    logger.log({"loss": 1.0}, step=1)
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_disabled_wandb_still_writes_jsonl(tmp_path):
    logger = make_logger(True, tmp_path, LoggingConfig(wandb_mode="disabled"), "x", {})
    logger.log({"loss": 2.0}, step=7, console=False)
    logger.close()
    assert read_metrics(tmp_path) == [{"loss": 2.0, "step": 7}]
    assert not (tmp_path / "wandb").exists()

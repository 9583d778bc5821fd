"""The trained net's W&B model artifact, around its export: what a failed export, `logging.wandb_log_model=off`, a
rank other than the primary and a missing library do. The artifact itself, logged by a real training and read back
from the offline W&B run, is checked by the Ctrl-C test of `launch local` (tests/launch/submit/test_local.py)."""

from __future__ import annotations

import pytest

from pipeline.config import load_config, save_config
from pipeline.config.schema import LoggingConfig
from pipeline.dist import DistInfo
from pipeline.run.layout import RunDir
from pipeline.run.logger import make_logger, read_metrics
from pipeline.train import model_artifact
from pipeline.train.model_artifact import artifact_name, library_warning, log_model
from tests.support import DEMO_CONFIG


@pytest.fixture
def unexportable(tmp_path):
    """A run directory whose config asks for the model artifact, but which holds no checkpoint to export."""
    cfg = load_config(DEMO_CONFIG, [f"run.out_dir={tmp_path}", "run.name=r", "logging.wandb_mode=offline"])
    run = RunDir.of(cfg)
    save_config(cfg, run.config)
    # The logger's own W&B off: the export fails before anything would be sent, and no W&B service is started.
    logger = make_logger(True, run.path, LoggingConfig(wandb_mode="disabled"), "r", {})
    return cfg, run, logger


def test_a_failed_export_is_one_warning_and_off_exports_nothing(unexportable, capfd):
    cfg, run, logger = unexportable
    log_model(cfg, DistInfo(rank=1, world_size=2), run, logger, 40)  # not the primary: nothing tried
    cfg.logging.wandb_log_model = "off"
    log_model(cfg, DistInfo(), run, logger, 40)
    assert read_metrics(run.path) == [] and not run.exports.exists()

    cfg.logging.wandb_log_model = "final"
    log_model(cfg, DistInfo(), run, logger, 40)  # returns: the training it ends stays finished
    (warning,) = [m["event"] for m in read_metrics(run.path)]
    assert warning.startswith("warning: the trained model was not logged to W&B: its export "
                              "(logging.wandb_log_model=final) failed: FileNotFoundError: "), warning
    assert "no complete checkpoint to use as 'last'" in warning
    assert f"try `python -m pipeline.export {run.path} --checkpoint last`" in warning
    assert "event=warning: the trained model was not logged" in capfd.readouterr().err


def test_without_safetensors_the_start_says_so_once_and_the_end_exports_nothing(unexportable, monkeypatch):
    cfg, run, logger = unexportable
    monkeypatch.setitem(model_artifact.NEEDS, "safetensors", ("safetensors", "no_such_module_for_the_test"))
    said = library_warning(cfg.logging)
    assert said == ("logging.wandb_log_model=final: the trained model will not be logged to W&B, its export needs "
                    "no_such_module_for_the_test: pip install 'resnet-repro[export]' (or set "
                    "logging.wandb_log_model=off)")
    log_model(cfg, DistInfo(), run, logger, 40)
    assert read_metrics(run.path) == []  # said at the start, not again
    assert library_warning(LoggingConfig(wandb_mode="disabled")) is None
    assert library_warning(LoggingConfig(wandb_log_model="off")) is None


def test_the_artifact_name_is_the_run_name_in_the_characters_wandb_takes():
    assert artifact_name("cifar10-resnet110-seed0") == "model-cifar10-resnet110-seed0"
    assert artifact_name("a b/c:d+e.f_g") == "model-a-b-c-d-e.f_g"
    assert len(artifact_name("x" * 300)) == 128

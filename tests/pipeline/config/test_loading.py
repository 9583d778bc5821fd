"""The config system: base chains, overrides, errors that name the key and the file, round trips."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, loggable_config, save_config
from tests.support import REPO

CONFIG_FILES = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "tables" not in p.parts)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_paper_cifar_recipe():
    cfg = load_config()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert list(cfg.schedule.milestones) == [32000, 48000] and cfg.schedule.total == 64000


def test_base_chain_merges_deepest_first(tmp_path):
    write(tmp_path / "root.yaml", "optim:\n  lr: 0.3\n  momentum: 0.5\n")
    write(tmp_path / "mid.yaml", "base: root.yaml\noptim:\n  lr: 0.2\n")
    leaf = write(tmp_path / "leaf.yaml", "base: mid.yaml\noptim:\n  weight_decay: 5.0e-4\n")
    cfg = load_config(leaf)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.2, 0.5, 5e-4)


def test_override_reaches_resolved_config():
    cfg = load_config(REPO / "configs/cifar10/resnet20.yaml", ["optim.lr=0.05", "logging.wandb_tags=[a,b]"])
    assert cfg.optim.lr == 0.05
    assert list(cfg.logging.wandb_tags) == ["a", "b"]
    assert cfg.model.name == "cifar_resnet20"  # the file's values survive the override


def test_unknown_key_names_key_and_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "optim.lrr" in str(e.value) and str(bad) in str(e.value)


def test_unknown_section_names_it(tmp_path):
    bad = write(tmp_path / "bad.yaml", "optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'optimizer'"):
        load_config(bad)


def test_wrong_type_names_key_and_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "optim.lr" in str(e.value) and str(bad) in str(e.value) and "fast" in str(e.value)


def test_error_in_a_base_blames_the_base(tmp_path):
    base = write(tmp_path / "base.yaml", "engine:\n  precision: fp8\n")
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(leaf)
    assert str(base) in str(e.value) and "engine.precision" in str(e.value)


def test_missing_base_names_both_files(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(leaf)
    assert "nowhere.yaml" in str(e.value) and str(leaf) in str(e.value)


def test_base_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "override, needle",
    [("optim.foo=1", "optim.foo"), ("optim.lr=abc", "optim.lr"), ("run.seed=1.5", "run.seed"), ("lr", "lr")],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "command line" in str(e.value)


def test_choice_fields_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="engine.name"):
        load_config(None, ["engine.name=horovod"])
    with pytest.raises(ConfigError, match=r"the command line: logging.wandb_log_model: 'last' is not one of off, "
                                          r"final, best"):
        load_config(None, ["logging.wandb_log_model=last"])
    # A bare `off` is YAML's false: it still means off, in a file and on the command line, and round-trips.
    (tmp_path / "off.yaml").write_text("logging:\n  wandb_log_model: off\n")
    for cfg in (load_config(tmp_path / "off.yaml"), load_config(None, ["logging.wandb_log_model=off"])):
        assert cfg.logging.wandb_log_model == "off"
        assert load_config(save_config(cfg, tmp_path / "saved.yaml")).logging.wandb_log_model == "off"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs/imagenet/resnet50.yaml", ["optim.lr=0.2", "slurm.additional={gres: gpu:8}"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert path.read_text() == save_config(load_config(path), tmp_path / "again.yaml").read_text()


def test_loggable_config_leaves_secrets_out():
    cfg = load_config(None, ["slurm.additional={api_key: abc123, comment: ok}"])
    logged = loggable_config(cfg)
    assert "api_key" not in logged["slurm"]["additional"] and logged["slurm"]["additional"]["comment"] == "ok"
    assert "abc123" not in repr(logged)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_file_loads(path):
    load_config(path)


def test_paper_rows_have_configs():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIG_FILES}
    cifar = [f"cifar10/resnet{d}.yaml" for d in (20, 32, 44, 56, 110, 1202)]
    cifar += [f"cifar10/plain{d}.yaml" for d in (20, 32, 44, 56)]
    imagenet = [f"imagenet/resnet{d}.yaml" for d in (18, 34, 50, 101, 152)]
    imagenet += ["imagenet/plain18.yaml", "imagenet/plain34.yaml"]
    imagenet += [f"imagenet/resnet34_{o}.yaml" for o in "abc"]
    assert set(cifar + imagenet) <= names


def test_paper_recipes_in_configs():
    r110 = load_config(REPO / "configs/cifar10/resnet110.yaml")
    assert (r110.schedule.warmup, r110.schedule.warmup_until_error, r110.schedule.warmup_lr) == \
        ("until_train_error", 80.0, 0.01)
    r1202 = load_config(REPO / "configs/cifar10/resnet1202.yaml")
    assert r1202.model.name == "cifar_resnet1202" and r1202.schedule.warmup == "until_train_error"
    r34c = load_config(REPO / "configs/imagenet/resnet34_c.yaml")
    assert (r34c.model.name, r34c.model.shortcut, r34c.data.batch_size) == ("resnet34", "C", 256)
    r50 = load_config(REPO / "configs/imagenet/resnet50.yaml")
    assert (r50.model.shortcut, r50.model.bottleneck_stride, r50.data.augmentation) == ("B", "1x1", "paper")


def test_a_renamed_key_still_loads_under_its_new_name_with_a_warning(tmp_path, caplog):
    """Run directories keep the config.yaml they were trained with: the evaluation batch was global, now per GPU."""
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  eval_batch_size: 40\n")
    assert load_config(old).data.eval_batch_per_gpu == 40
    assert load_config(None, ["data.eval_batch_size=24"]).data.eval_batch_per_gpu == 24
    assert "data.eval_batch_size is now data.eval_batch_per_gpu" in caplog.text


@pytest.mark.parametrize("key", ["timeout_minutes", "hang_timeout_minutes"])
def test_process_group_timeouts_must_be_positive(key):
    with pytest.raises(ConfigError, match=f"engine.{key} must be positive"):
        load_config(None, [f"engine.{key}=0"])

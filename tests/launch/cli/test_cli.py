"""The launch CLI without a cluster: --dry-run prints the exact sbatch script; bad configs are refused."""

import sys

import pytest

from tests.support import REPO, TESTS
from tests.support.commands import launch

EXPECTED = TESTS / "expected" / "submit_dry_run.sbatch"


def test_dry_run_prints_the_expected_sbatch_script(tmp_path):
    repo = REPO
    proc = launch("submit", str(repo / "configs/cifar10/resnet56.yaml"), f"run.out_dir={tmp_path}/runs",
                  "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--account", "lab",
                  "--time", "720", "--cpus-per-task", "6", "--sbatch", "mail-type=END", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout.split("# resolved config")[0]
    script = script.replace(str(tmp_path), "<TMP>").replace(sys.executable, "<PYTHON>")
    assert script == EXPECTED.read_text()
    assert "name: cifar_resnet56" in proc.stdout.split("# resolved config")[1]
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_bad_config_is_refused_before_submission(tmp_path):
    proc = launch("submit", "configs/cifar10/resnet20.yaml", "optim.lrr=0.1", f"run.out_dir={tmp_path}",
                  cwd=REPO)
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_options_and_overrides_go_in_any_order_and_help_shows_defaults(capsys):
    from launch.cli.parsers import parse

    # The option after the config, the overrides after the option: argparse alone refuses the overrides.
    for argv in (["local", "c.yaml", "--nproc", "3", "data.root=/d", "optim.lr=0.1"],
                 ["local", "--nproc", "3", "data.root=/d", "c.yaml", "optim.lr=0.1"]):
        args = parse(argv)
        assert (args.config, args.nproc, args.overrides) == ("c.yaml", 3, ["data.root=/d", "optim.lr=0.1"]), argv
    # An option of several values followed by overrides: alone, --seeds would take them as seeds.
    args = parse(["reproduce", "t.yaml", "--seeds", "0", "1", "data.root=/d", "--runs", "R", "--sbatch",
                  "mail-type=END"])
    assert (args.seeds, args.overrides, args.runs, args.resources.sbatch) == ([0, 1], ["data.root=/d"], "R",
                                                                           ("mail-type=END",))
    args = parse(["bench", "--models", "resnet50", "cifar_resnet20", "data.root=/d", "--steps", "5"])
    assert (args.models, args.overrides, args.steps) == (["resnet50", "cifar_resnet20"], ["data.root=/d"], 5)
    # Nothing after `--` is an override: it is data_prep's.
    args = parse(["prep", "--num-tasks", "2", "--", "synth", "--out", "o", "x.y=1"])
    assert args.prep_args[-1] == "x.y=1"
    # A command that takes none says so.
    with pytest.raises(SystemExit):
        parse(["status", "runs", "data.root=/d"])
    assert "`status` takes no section.key=value overrides (got data.root=/d)" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        parse(["bench", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "timed training steps per model (default: 50)" in shown and "(default: throughput.json)" in shown
    assert "(default: None)" not in shown and "(default: False)" not in shown

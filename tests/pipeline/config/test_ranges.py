"""Numbers out of range are refused before a run starts: one `error:` line naming the key and its range, exit 2,
nothing written. Most cases go through `load_config` in this process; a few run the real command lines for the
exit code and the empty run.out_dir (issue 30, item 3: each of those crashed mid-run or did the wrong thing)."""

import dataclasses
import subprocess
import sys
import typing

import pytest

from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.config.ranges import RANGES, Range
from tests.support import REPO
from tests.support.commands import launch, launch_here

DEMO = REPO / "configs/demo/digits.yaml"

# (override, what the message must say): the list first, then a few of every kind of range.
BAD = [
    ("logging.every_steps=0", "logging.every_steps must be at least 1, not 0"),
    ("data.batch_size=0", "data.batch_size must be at least 1, not 0"),
    ("schedule.total=-5", "schedule.total must be at least 1, not -5"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps must be at least 0 (0: off), not -1"),
    ("eval.every_steps=-3", "eval.every_steps must be at least 0 (0: off), not -3"),
    ("eval.every_epochs=-1", "eval.every_epochs must be at least 0 (0: only at the end), not -1"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be at least 1, not 0"),
    ("checkpoint.every_minutes=-1", "checkpoint.every_minutes must be at least 0 (0: off)"),
    ("optim.lr=0", "optim.lr must be positive, not 0"),
    ("optim.lr=nan", "optim.lr must be positive, not nan"),
    ("optim.lr=inf", "optim.lr must be positive, not inf"),
    ("optim.momentum=1", "optim.momentum must be in [0, 1), not 1"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be at least 0, not -0.1"),
    ("schedule.milestones=[-1,5]", "schedule.milestones must each be at least 0, not [-1, 5]"),
    ("schedule.milestones=[5,1]", "schedule.milestones must be increasing"),
    ("schedule.gamma=0", "schedule.gamma must be in (0, 1], not 0"),
    ("schedule.warmup_iterations=-1", "schedule.warmup_iterations must be at least 0, not -1"),
    ("schedule.warmup_until_error=101", "schedule.warmup_until_error must be in [0, 100], not 101"),
    ("run.seed=-1", "run.seed must be in [0, 2147483647], not -1"),
    ("model.num_classes=0", "model.num_classes must be at least 1, not 0"),
    ("data.rrc_min_scale=0", "data.rrc_min_scale must be in (0, 1], not 0"),
    ("data.num_threads=-1", "data.num_threads must be at least 0 (0: the torch loader reads in the rank's own "
                            "process), not -1"),
    ("data.num_threads=0", "data.num_threads must be at least 1 with data.backend=dali"),
    ("eval.scales=[224,0]", "eval.scales must each be at least 1, not [224, 0]"),
    ("slurm.nodes=0", "slurm.nodes must be at least 1, not 0"),
    ("slurm.tasks_per_node=0", "slurm.tasks_per_node must be at least 1, not 0"),
    ("slurm.max_requeues=-1", "slurm.max_requeues must be at least 0, not -1"),
    ("data.batch_size=2.5", "bad value for 'data.batch_size'"),  # an integer key given a fraction: OmegaConf's
]


@pytest.mark.parametrize("override, says", BAD, ids=[o for o, _ in BAD])
def test_a_number_out_of_range_is_refused_naming_key_and_range(override, says):
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [override])
    message = str(e.value)
    assert says in message, message
    assert "\n" not in message


@pytest.mark.parametrize("override", ["checkpoint.every_steps=0", "eval.every_steps=0", "eval.every_epochs=0",
                                      "optim.momentum=0", "slurm.gpus_per_node=0", "model.bn_group_size=0",
                                      "data.pca_lighting=0", "schedule.gamma=1", "data.hw_decoder_load=1"])
def test_the_ends_of_a_range_load(override):
    load_config(DEMO, [override])


def test_the_torch_loader_may_read_in_the_rank_itself():
    assert load_config(DEMO, ["data.backend=torch", "data.num_threads=0"]).data.num_threads == 0


def test_every_number_of_the_schema_has_a_range():
    """A new numeric field without a range would be the next ZeroDivisionError; choices are checked apart."""
    choices = {("engine", "zero_stage")}
    for section in dataclasses.fields(ExperimentConfig):
        hints = typing.get_type_hints(section.default_factory)
        for key, hint in hints.items():
            numeric = {int, float} & {hint, *typing.get_args(hint)}
            if numeric and (section.name, key) not in choices:
                assert key in RANGES[section.name], f"{section.name}.{key} has no range"


def test_a_range_in_words():
    assert Range(1).text() == "at least 1"
    assert Range(0, low_open=True).text() == "positive"
    assert Range(0, 1, high_open=True).text() == "in [0, 1)"
    assert Range(0, note="0: off").text() == "at least 0 (0: off)"


def test_a_binary_config_is_one_line(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"weights.yaml: not a YAML text file \(") as e:
        load_config(path)
    assert "\n" not in str(e.value)


def _train(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.train", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("override, says", [BAD[0], BAD[2], BAD[3]], ids=lambda v: v)
def test_train_refuses_before_writing_anything(tmp_path, override, says):
    runs = tmp_path / "runs"
    proc = _train(DEMO, f"run.out_dir={runs}", override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: the command line: {says}"]
    assert not runs.exists() and sorted(tmp_path.iterdir()) == [], "nothing may be written"


def test_train_refuses_a_binary_config_in_one_line(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x80\x02\xff\xfe" * 64)
    proc = _train(binary, f"run.out_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"error: {binary}: not a YAML text file (")
    assert not (tmp_path / "runs").exists()


def test_launch_local_refuses_zero_processes(tmp_path):
    proc = launch("local", DEMO, f"run.out_dir={tmp_path / 'runs'}", "--nproc", "0", cwd=tmp_path)
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert line.endswith("error: argument --nproc: must be an integer at least 1, not 0")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, says", [
    (["local", "c.yaml", "--nproc", "-2"], "--nproc: must be an integer at least 1, not -2"),
    (["local", "c.yaml", "--nproc", "1.5"], "--nproc: must be an integer at least 1, not '1.5'"),
    (["submit", "c.yaml", "--nodes", "0"], "--nodes: must be an integer at least 1, not 0"),
    (["submit", "c.yaml", "--gpus-per-node", "-1"],
     "--gpus-per-node: must be an integer at least 0 (0: CPU-only), not -1"),
    (["submit", "c.yaml", "--tasks-per-node", "0"], "--tasks-per-node: must be an integer at least 1, not 0"),
    (["submit", "c.yaml", "--cpus-per-task", "0"], "--cpus-per-task: must be an integer at least 1, not 0"),
    (["submit", "c.yaml", "--time", "0"], "--time: must be an integer at least 1, not 0"),
    (["submit", "c.yaml", "--mem-gb", "0"], "--mem-gb: must be an integer at least 1, not 0"),
    (["submit", "c.yaml", "--max-requeues", "-1"], "--max-requeues: must be an integer at least 0, not -1"),
    (["submit", "c.yaml", "--signal-delay-s", "-1"], "--signal-delay-s: must be an integer at least 0, not -1"),
    (["sweep", "t.yaml", "--seeds", "0", "-1"], "--seeds: must be an integer in [0, 2147483647], not -1"),
    (["sweep", "t.yaml", "--array-parallelism", "0"], "--array-parallelism: must be an integer at least 1, not 0"),
    (["bench", "--models", "m", "--steps", "0"], "--steps: must be an integer at least 1, not 0"),
    (["bench", "--models", "m", "--warmup-steps", "-1"], "--warmup-steps: must be an integer at least 0, not -1"),
    (["plan", "t.yaml", "--nodes", "1", "0"], "--nodes: must be an integer at least 1, not 0"),
    (["plan", "t.yaml", "--backward-fraction", "2"], "--backward-fraction: must be in [0, 1], not 2"),
    (["prep", "--num-tasks", "0"], "--num-tasks: must be an integer at least 1, not 0"),
])
def test_launch_flags_out_of_range_are_refused(args, says):
    proc = launch_here(*args)
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert line.endswith(f"error: argument {says}"), line

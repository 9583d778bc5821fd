"""A metrics.jsonl whose last append was cut short (a node crash, a full disk): the next start resumes."""

import subprocess

import pytest

from launch.submit.local import local_command
from pipeline.run.jsonl import JsonlDamaged, read_jsonl
from pipeline.run.logger import read_metrics
from pipeline.run.state import read_run_state
from tests.support import DEMO_CONFIG, REPO
from tests.support.training import env, small_run, train

TORN = b'{"step": 11, "kind": "tra'


def test_what_reads_a_torn_run_sees_every_whole_record(tmp_path):
    """Until the next start cuts the torn line, what reads the run (status, the report) sees every whole record.
    The start's cut, its warning (console and event) and the resume, W&B offline, are the kill soak's `torn-metrics`
    (tests/pipeline/train/test_kill_soak.py)."""
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes(b'{"step": 15, "kind": "train", "loss": 1.0}\n'
                                            b'{"step": 16, "kind": "train", "loss": 0.9}\n' + TORN)
    assert read_metrics(run_dir)[-1]["step"] == 16
    assert read_run_state(run_dir).step == 16


def test_a_bad_line_before_the_last_is_damage_named_by_file_and_line(digits_dataset, tmp_path):
    # W&B off (not the default): what is tested is how metrics.jsonl is read, which W&B has no part in.
    train(1, small_run(digits_dataset, tmp_path, "schedule.total=8", "logging.wandb_mode=disabled"))
    metrics = tmp_path / "t" / "metrics.jsonl"
    lines = metrics.read_bytes().split(b"\n")
    metrics.write_bytes(b"\n".join([*lines[:2], TORN, *lines[2:]]))
    with pytest.raises(JsonlDamaged, match=rf"{metrics}: line 3 is not a JSON record"):
        read_metrics(tmp_path / "t")
    proc = subprocess.run(local_command(DEMO_CONFIG, small_run(digits_dataset, tmp_path, "schedule.total=16",
                                                               "logging.wandb_mode=disabled"), 1),
                          capture_output=True, text=True, cwd=REPO, env=env(), timeout=600)
    assert proc.returncode != 0 and f"{metrics}: line 3 is not a JSON record" in proc.stderr
    assert TORN in metrics.read_bytes()  # the damage is left for a person to see


@pytest.mark.parametrize("tail, torn", [(TORN, TORN), (b"\0" * 7, b"\0" * 7), (b'{"step": 3}', b""),
                                        ("{\"a\": \"é".encode()[:-1], "{\"a\": \"é".encode()[:-1])])
def test_read_jsonl_leaves_out_only_a_torn_last_line(tmp_path, tail, torn):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"step": 1}\n\n{"step": 2}\n' + tail)
    read = read_jsonl(path)
    assert read.records[:2] == [{"step": 1}, {"step": 2}] and read.torn == torn
    assert read.needs_rewrite  # the next append must not join the last line

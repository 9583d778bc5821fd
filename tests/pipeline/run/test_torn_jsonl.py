"""A metrics.jsonl whose last append was cut short (a node crash, a full disk): the next start resumes."""

import json
import subprocess

import pytest

from launch.submit.local import local_command
from pipeline.run.jsonl import JsonlDamaged, read_jsonl
from pipeline.run.logger import read_metrics
from pipeline.run.state import read_run_state
from tests.support import DEMO_CONFIG, REPO
from tests.support.training import env, small_run, train

TORN = b'{"step": 11, "kind": "tra'


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(digits_dataset, tmp_path):
    train(1, small_run(digits_dataset, tmp_path, "schedule.total=16", "logging.wandb_mode=disabled"))
    metrics = tmp_path / "t" / "metrics.jsonl"
    with metrics.open("ab") as f:
        f.write(TORN)
    # What reads the run while it is torn (status, the report) sees every whole record.
    assert read_metrics(tmp_path / "t")[-1]["step"] == 16
    assert read_run_state(tmp_path / "t").step == 16

    train(1, small_run(digits_dataset, tmp_path, "schedule.total=24", "logging.wandb_mode=disabled"))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line whole
    warnings = [r for r in records if "dropped its last line" in r.get("event", "")]
    assert len(warnings) == 1 and f"{len(TORN)} bytes" in warnings[0]["event"], warnings
    assert warnings[0]["event"].startswith("warning: ") and warnings[0]["step"] == 16
    assert records[-1]["step"] == 24 and any(r.get("kind") == "final" for r in records)


def test_a_bad_line_before_the_last_is_damage_named_by_file_and_line(digits_dataset, tmp_path):
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

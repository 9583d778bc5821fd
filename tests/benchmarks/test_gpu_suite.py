"""benchmarks/gpu_suite.py: the reduced (CPU) suite runs and its table names every row, measured or why not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.training import env

SCRIPT = REPO / "benchmarks" / "gpu_suite.py"
# Rows cheap enough for a test on 2 busy cores (about 2 minutes), one of each kind: a loader row (DALI's
# CPU counterpart of "mixed"), ResNet-50 on real ImageNet-sized shards at bf16 + channels_last and the
# CIFAR step time through `pipeline.train`, the 64k projection derived from it, and a torch.compile row
# (needs a GPU: reported, not run). The whole reduced suite is benchmarks/results/gpu_suite.md.
SUBSET = ["dali-decode", "cifar20-step", "cifar20-64k", "r50-compile-synthetic"]
REASONS = ("needs a GPU", "skipped", "not selected", "needs row")


def load_suite():
    """The script as a module (its import is light: no torch, no DALI)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_suite


def run_suite(out: Path, *args: str, timeout: float = 240) -> dict[str, dict[str, str]]:
    """Run the script into `out`; returns its table as {row key: {column: cell}}."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--reduced", "--out", str(out), *args], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = out.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
    names = [c.strip() for c in lines[header].strip("|").split("|")]
    table = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(names, (c.strip() for c in line.strip("|").split("|"))))
        table[cells["row"]] = cells
    return table


def is_number(cell: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?", cell) is not None


def test_every_row_has_a_reduced_setting_or_says_it_needs_a_gpu():
    for row in load_suite().ROWS:
        assert row.cpu is not None or row.cpu_note.startswith("needs a GPU"), row.key
        if row.cpu is not None and row.kind == "train":  # reduced: tiny next to the GPU setting
            size = lambda s: s.batch * s.image ** 2 * s.steps  # noqa: E731
            assert size(row.cpu) < size(row.gpu), row.key


@pytest.mark.slow
def test_reduced_subset_runs_on_cpu_and_names_every_row(tmp_path):
    out = tmp_path / "gpu_suite.md"
    table = run_suite(out, "--rows", ",".join(SUBSET))
    text = out.read_text()
    assert re.search(r"^Machine: \d+ cores .*torch ", text, re.M), text
    assert set(table) == {row.key for row in load_suite().ROWS}
    for key, cells in table.items():
        assert is_number(cells["figure"]) or any(r in cells["note"] for r in REASONS), (key, cells)
    for key in ("dali-decode", "cifar20-step", "cifar20-64k"):
        assert is_number(table[key]["figure"]) and float(table[key]["figure"]) > 0, (key, table[key])
        assert table[key]["ran on"] == "CPU (reduced)"
    assert "CPU counterpart: DALI CPU decode" in table["dali-decode"]["note"]
    step_ms, minutes = float(table["cifar20-step"]["figure"]), float(table["cifar20-64k"]["figure"])
    assert minutes == pytest.approx(step_ms * 64000 / 60000, rel=0.01, abs=0.1)
    assert table["r50-compile-synthetic"]["note"].startswith("needs a GPU: not run")
    assert "Rows that need a GPU for their real figure:" in text and "r1202-memory" in text


def test_time_budget_skips_rows_and_lists_them(tmp_path):
    table = run_suite(tmp_path / "gpu_suite.md", "--rows", "r50-synthetic,r152-synthetic", "--budget-s", "1",
                      timeout=120)
    for key in ("r50-synthetic", "r152-synthetic"):
        assert table[key]["figure"] == "-" and table[key]["note"].startswith("skipped: time budget"), table[key]
    assert "Skipped by the 1 s time budget: r50-synthetic, r152-synthetic" in (tmp_path / "gpu_suite.md").read_text()

"""The launch CLI without a cluster: --dry-run prints the exact sbatch script; bad configs are refused."""

import subprocess
import sys
from pathlib import Path

EXPECTED = Path(__file__).parent / "expected" / "submit_dry_run.sbatch"


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, cwd=cwd)


def test_dry_run_prints_the_expected_sbatch_script(tmp_path):
    repo = Path(__file__).resolve().parents[1]
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
                  cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr
    assert not any(tmp_path.iterdir())

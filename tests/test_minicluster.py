"""The one-machine SLURM cluster: starts, is idempotent, runs a real job."""

import subprocess
import sys
import time

from launch import minicluster
from tests.slurm_support import require_minicluster


def test_up_is_idempotent_and_node_is_usable():
    first = require_minicluster()
    assert first.up
    again = subprocess.run([sys.executable, "-m", "launch.minicluster", "up"], capture_output=True, text=True)
    assert again.returncode == 0 and "slurmctld: running" in again.stdout
    assert minicluster.status().up


def test_a_batch_job_runs(tmp_path):
    require_minicluster()
    out = tmp_path / "out.txt"
    job = subprocess.run(["sbatch", "--parsable", "-n", "1", f"--output={out}", "--wrap", "echo ran on $SLURM_JOB_NODELIST"],
                         capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and "ran on" in out.read_text()):
        time.sleep(0.5)
    assert out.exists() and "ran on" in out.read_text(), f"job {job} did not run"


def test_conf_names_this_machine():
    text = minicluster.slurm_conf_text("host1", 2, 4096)
    assert "NodeName=host1 CPUs=2 RealMemory=4096" in text and minicluster.MARKER in text

"""The SLURM minicluster: starts, is idempotent, has 2 real nodes that run one job's tasks side by side, and a
slurmctld it starts starts clean unless asked to keep an earlier cluster's jobs."""

import re
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from launch import minicluster
from tests.support.slurm import NODES, require_minicluster

pytestmark = pytest.mark.slurm


def test_up_is_idempotent_and_every_node_is_usable():
    first = require_minicluster()
    assert first.up and first.slurmd == ["n1", "n2"]
    again = subprocess.run([sys.executable, "-m", "launch.minicluster", "up"], capture_output=True, text=True)
    assert again.returncode == 0 and "slurmd: n1, n2" in again.stdout  # keeps its node count
    status = subprocess.run([sys.executable, "-m", "launch.minicluster", "status"], capture_output=True, text=True)
    assert status.returncode == 0  # every node usable (idle, or running a job another test left finishing)
    assert re.search(r"n1 (idle|mixed|allocated|completing)", status.stdout), status.stdout
    assert re.search(r"n2 (idle|mixed|allocated|completing)", status.stdout), status.stdout
    assert [socket.gethostbyname(n) for n in minicluster.node_names(NODES)] == ["127.0.0.1"] * NODES


def test_a_two_node_step_runs_one_task_on_each_node(tmp_path):
    require_minicluster()
    out = tmp_path / "out.txt"
    report = 'echo "$SLURM_PROCID $SLURM_NODEID $SLURM_LOCALID $SLURMD_NODENAME $SLURM_JOB_NODELIST"'
    job = subprocess.run(["sbatch", "--parsable", "-N", "2", "--ntasks-per-node", "1", f"--output={out}",
                          "--wrap", f"srun bash -c '{report}'"], capture_output=True, text=True,
                         check=True).stdout.strip()
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and len(out.read_text().splitlines()) == 2):
        time.sleep(0.5)
    assert out.exists(), f"job {job} did not run"
    assert sorted(out.read_text().splitlines()) == ["0 0 0 n1 n[1-2]", "1 1 0 n2 n[1-2]"]


def test_conf_gives_each_node_its_own_daemon_port_and_files():
    text = minicluster.slurm_conf_text("host1", 2, 4096, ["n1", "n2"])
    assert minicluster.MARKER in text
    assert "NodeName=n1 NodeAddr=127.0.0.1 NodeHostname=host1 Port=6818 CPUs=2 RealMemory=4096" in text
    assert "NodeName=n2 NodeAddr=127.0.0.1 NodeHostname=host1 Port=6819 CPUs=2 RealMemory=4096" in text
    assert "SlurmdSpoolDir=/var/lib/slurm-minicluster/spool/%n" in text and "slurmd-%n.pid" in text


def test_hosts_entries_are_added_and_removed_leaving_other_lines():
    original = "127.0.0.1 localhost\n10.0.0.5 fileserver\n"
    mapped = minicluster.hosts_text(original, ["n1", "n2"])
    assert mapped.startswith(original) and f"127.0.0.1 n2 {minicluster.MARKER}" in mapped
    assert minicluster.hosts_text(minicluster.hosts_text(mapped, ["n1"]), []) == original


def test_slurmctld_starts_without_an_earlier_clusters_jobs_unless_kept_and_then_names_them():
    """(slurmctld -c drops the saved jobs and keeps the job id sequence: checked by hand with a second controller
    on its own ports, a pending job there before and after a restart without -c, gone after one with it, and the
    next job id after it the next in line.)"""
    assert minicluster.slurmctld_flags(keep_jobs=False) == ["-c"] and minicluster.slurmctld_flags(True) == []
    running = minicluster.Status(True, True, ["n1", "n2"], ["n1 idle 2", "n2 idle 2"])
    assert minicluster.up_lines(running) == []  # slurmctld was running (its jobs are its own), or nothing was saved
    clean = minicluster.up_lines(replace(running, cleared=True))
    assert len(clean) == 1 and "started clean" in clean[0] and "--keep-jobs" in clean[0]
    kept = replace(running, kept_jobs=["187 RUNNING t 2 n[1-2]"])
    assert minicluster.up_lines(kept) == ["--keep-jobs: kept 1 job(s) of the earlier cluster (id state name nodes "
                                          "where/why):", "  187 RUNNING t 2 n[1-2]"]
    assert minicluster.up_lines(replace(kept, kept_jobs=[])) == ["--keep-jobs: the earlier cluster saved no jobs"]

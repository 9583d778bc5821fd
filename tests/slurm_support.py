"""Shared by the SLURM tests: bring the real one-machine cluster up, or skip where it cannot run.

Under CI (`CI=true`, where `.ci/run` installs slurm-wlm) a cluster that cannot start fails the tests
instead of skipping them.
"""

import os
import shutil

import pytest


def require_minicluster():
    from launch import minicluster

    if os.environ.get("CI") != "true" and (os.geteuid() != 0 or not shutil.which("slurmctld")):
        pytest.skip("needs root and Debian's slurm-wlm (apt-get install slurm-wlm munge)")
    return minicluster.up()

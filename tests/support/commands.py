"""The project's commands as a user runs them: `python -m launch ...` in a subprocess (`launch`), or in this process
where a test calls it often and the start-up would dominate (`launch_here`); either way its exit code, stdout and
stderr. (data_prep's command line: `tests.support.prep.run_cli`; a training: `tests.support.training`.)"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from launch.cli import main as launch_main
from tests.support import REPO


def launch(*args: str, cwd: Path = REPO, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m launch ARGS` in a subprocess, one compute thread per process unless `env` says otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def launch_here(*args: str) -> subprocess.CompletedProcess:
    """`python -m launch ARGS` run in this process, from the repository: what it would have returned and printed
    as a subprocess (argparse's refusals included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = launch_main([str(a) for a in args])
        except SystemExit as exit:  # argparse's refusals
            code = exit.code
    return subprocess.CompletedProcess(["launch", *args], code, out.getvalue(), err.getvalue())

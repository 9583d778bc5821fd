"""A test that needs something this machine may lack (root, SLURM, a tmpfs, a kernel): skipped here, failed under CI.

CI (`CI=true` in `.ci/run`'s environment) is the machine that runs every test: there a missing requirement is a
broken CI machine, and a skip would let the test pass unseen. So under CI the test fails, with the same reason.
"""

import os
from typing import NoReturn

import pytest


def skip_or_fail_under_ci(reason: str) -> NoReturn:
    """Skip the calling test for `reason`; under CI, fail it for the same reason."""
    __tracebackhide__ = True  # pytest reports the caller's line, not this one
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: under CI this test must run)", pytrace=False)
    pytest.skip(reason)

"""The exit codes of `pipeline.train` (and of `launch local`, which returns its ranks' code), one per kind of end,
and how a command's process ends with one (`exit_process`).

A code other than 0 and 1 comes with one `error:` line on stderr that names the file or directory and what to do;
every rank exits with the same code, and only the primary rank prints the line. Light on purpose (no torch):
`launch` reads these to tell a stop from a failure.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

from data_prep.manifest import ManifestError  # a dataset written by another data_prep version

OK = 0
FAILED = 1  # an unexpected error: its traceback is printed (please report it)
USAGE = 2  # a bad config, command line, or a checkpoint this world size cannot continue
INTERRUPTED = 3  # stopped by a signal after saving a checkpoint: the same command (or the requeued job) resumes
LOCKED = 4  # another live run holds the run directory (its lock names the host, pid and SLURM job), or took it over
DATA = 5  # the prepared dataset is missing, damaged, or of a manifest version this code does not know
WRITE = 6  # the run directory cannot be written (a full disk, a read-only or unwritable directory)
CHECKPOINT = 7  # every checkpoint of the run is damaged (each is named), or a rank cannot open the one chosen
HUNG = 8  # another rank stopped answering for engine.hang_timeout_minutes: the job ended, the same command resumes

MEANINGS = {
    OK: "finished",
    FAILED: "an unexpected error (a traceback; please report it)",
    USAGE: "a bad config or command line (or a checkpoint this number of ranks cannot continue)",
    INTERRUPTED: "stopped by a signal after saving a checkpoint: run the same command again to resume",
    LOCKED: "another live run holds the run directory (the error names it): wait for it, or stop it; or it took "
            "the directory over while this one was paused, and this one wrote nothing more",
    DATA: "the dataset is missing, damaged or of an unknown manifest version (the error names the file)",
    WRITE: "the run directory cannot be written (disk full, read-only, permissions): the last complete "
           "checkpoint is kept; fix it and run the same command to resume",
    CHECKPOINT: "no checkpoint of the run is intact (the error names each damaged file and what to delete), or a "
                "rank cannot open the checkpoint rank 0 chose (the error names the file and the rank)",
    HUNG: "a rank stopped answering for engine.hang_timeout_minutes (hung or died): the job was ended, the run's "
          "lock released; run the same command to resume",
}


def describe_exit_codes() -> str:
    """The table above as help text."""
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in MEANINGS.items())


def exit_code_of(error: BaseException) -> int:
    """The exit code for an error: its own `exit_code` where it has one, else by kind; FAILED for the unexpected."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(error, ManifestError):
        return DATA
    return FAILED


def exit_process(code: int) -> NoReturn:
    """`sys.exit(code)` without the interpreter's last garbage collections, for a command whose work is done.

    Those collections walk every object torch, DALI and DeepSpeed made: about a second of CPU at the end of each
    rank, evaluation and launcher. What the command wrote is closed by then, threads are still joined and atexit
    handlers (W&B's among them) still run; the objects the collections would have freed go with the process."""
    gc.freeze()
    sys.exit(code)

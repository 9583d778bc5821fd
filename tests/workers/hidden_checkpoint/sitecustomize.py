"""One rank of a job sees the checkpoints as a node of a shared file system can: made on this machine by putting
this folder on the job's PYTHONPATH (Python imports `sitecustomize` at start-up). Test-only.

The rank `HIDE_ON_RANK` (torchrun's RANK) does not see the checkpoint directory `HIDE_CHECKPOINT`, as
`HIDE_HOW` says:
- `listing`: its listing of the checkpoints (`CheckpointStore.complete`) lacks it, as a node's cached NFS listing
  after a fast requeue does; opened by name, its files are there;
- `mount`: its files are really not there for this process: in a mount namespace of its own, an empty tmpfs
  covers the directory (needs the right to mount). The retry for a slow file system's view is shortened to
  `HIDE_RETRY_S` seconds: here the files never come back, and waiting a minute shows nothing more.
"""

import ctypes
import importlib.abc
import importlib.machinery
import os
import subprocess
import sys

HIDDEN = os.environ.get("HIDE_CHECKPOINT", "")
HOW = os.environ.get("HIDE_HOW", "listing")
ON_THIS_RANK = HIDDEN and os.environ.get("RANK") == os.environ.get("HIDE_ON_RANK", "1")


def mount_empty_over(path: str) -> None:
    """Cover `path` with an empty tmpfs in a private mount namespace: this process and its children only."""
    clone_newns = 0x00020000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(clone_newns) != 0:
        raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    # Mounts below / are shared with the host by default: private first, so the tmpfs stays in this namespace.
    for command in (["mount", "--make-rprivate", "/"], ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path]):
        subprocess.run(command, check=True, capture_output=True)


class _PatchOnceImported(importlib.abc.MetaPathFinder):
    """Changes a module of the pipeline as it is imported (importing it here, with torch, would slow every process
    started with this folder on its path)."""

    def __init__(self, patches):
        self.patches = patches

    def find_spec(self, name, path, target=None):
        if name not in self.patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load, patch = spec.loader.exec_module, self.patches.pop(name)
        if not self.patches:
            sys.meta_path.remove(self)

        def load_then_patch(module):
            load(module)
            patch(module)

        spec.loader.exec_module = load_then_patch
        return spec


def _listing_without_the_hidden(store_module):
    complete = store_module.CheckpointStore.complete

    def stale_complete(self, *args, **kwargs):
        return [c for c in complete(self, *args, **kwargs) if str(c.path) != HIDDEN]

    store_module.CheckpointStore.complete = stale_complete


def _short_retry(resume_module):
    resume_module.VISIBLE_WITHIN_S = float(os.environ.get("HIDE_RETRY_S", "2"))


if ON_THIS_RANK:
    if HOW == "mount":
        mount_empty_over(HIDDEN)
        sys.meta_path.insert(0, _PatchOnceImported({"pipeline.checkpoint.resume": _short_retry}))
    else:
        sys.meta_path.insert(0, _PatchOnceImported({"pipeline.checkpoint.store": _listing_without_the_hidden}))
    os.environ.pop("HIDE_CHECKPOINT")  # this rank's children (a loader's workers) neither hide nor mount again

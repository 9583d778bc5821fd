"""A restricted unpickler for the CIFAR python batches: only numpy array reconstruction is allowed.

The CIFAR files are pickles, and a pickle can call any importable function while loading. This unpickler
resolves only the globals that the real batches reference (numpy's ndarray reconstruction) and refuses
everything else before it is called, naming the file and the global.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (it could have run code)."""


# (module, name) pairs the real CIFAR batches use. numpy 2 renamed numpy.core to numpy._core;
# files written by either generation are accepted.
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class accepts only numpy array reconstruction."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # encoding="bytes": the CIFAR batches were written by Python 2; their str objects stay bytes.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load global {module}.{name} - a CIFAR batch only contains numpy "
                f"arrays, lists and dicts; this file may try to run code")

        try:
            mod = importlib.import_module(target[0])
        except ImportError:  # numpy < 2 has no numpy._core
            mod = importlib.import_module(target[0].replace("numpy._core", "numpy.core"))
        return getattr(mod, target[1])

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle")


def load_pickle(path: str | Path) -> Any:
    """Load a CIFAR-style pickle from `path` through the restricted unpickler.

    Raises UnsafePickleError (a pickle.UnpicklingError) naming the file for any refused global,
    and ValueError naming the file for object-dtype arrays (which would hide arbitrary objects)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated or not a pickle at all
            raise pickle.UnpicklingError(f"{path}: not a readable CIFAR pickle: {e}") from e
    _reject_object_arrays(obj, path)
    return obj


def _reject_object_arrays(obj: Any, path: Path) -> None:
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else [obj]
    for v in values:
        if isinstance(v, np.ndarray) and v.dtype.hasobject:
            raise ValueError(f"{path}: holds an object array; a CIFAR batch holds only uint8 pixel data")

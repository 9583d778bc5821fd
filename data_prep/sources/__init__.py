"""Input sources: each turns a raw dataset tree into classes and per-split lists of `Item`s.

Listing is cheap (directory scans, stat for sizes, label files); images are read later by the shard workers.
Every regular, non-hidden file under a class folder is an input: anything unusable is rejected by the
workers and listed, never skipped silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..shards import Item


@dataclass
class SourceData:
    """A listed dataset, ready to plan shards from."""

    dataset: str  # imagenet | cifar10 | cifar100 | folder
    image_ext: str  # jpg | png
    classes: List[Dict]  # [{"index", "id", "name"}], index = position
    splits: Dict[str, List[Item]]
    # CIFAR: exact (mean, std, mean image) of the train split; None -> sampled from the shards.
    exact_stats: Optional[Tuple[List[float], List[float], np.ndarray]] = None
    notes: List[str] = field(default_factory=list)


def list_files(folder: Path) -> List[Tuple[str, int]]:
    """(path, size) of every regular, non-hidden file directly in `folder`, sorted by name."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") or not e.is_file():
                continue
            out.append((e.path, e.stat().st_size))
    out.sort()
    return out


def class_dirs(root: Path) -> List[str]:
    """Sorted names of the non-hidden sub-directories of `root`."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_class_tree(root: Path, class_index: Dict[str, int]) -> List[Item]:
    """Items of a class-per-folder tree whose folders must all be known classes (else ValueError)."""
    items: List[Item] = []
    for name in class_dirs(root):
        if name not in class_index:
            raise ValueError(f"{root / name}: class folder not among the {len(class_index)} training classes")
        items += [Item(class_index[name], p, s) for p, s in list_files(root / name)]
    return items

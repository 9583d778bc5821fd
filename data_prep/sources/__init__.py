"""Input sources: each turns a raw dataset tree into classes and per-split lists of `Item`s.

Listing is cheap (directory scans, stat for sizes, label files); images are read later by the shard workers.
Every regular file in a class folder is an input: anything unusable - hidden files (macOS AppleDouble
`._*`, `.DS_Store`) included - is rejected by the workers and listed, never skipped silently. So are the
things that are no input at all: files in sub-folders of a class folder (class folders are read flat),
dangling links and special files. Thus written + rejected = found holds for what is on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..shards import Item


@dataclass
class SourceData:
    """A listed dataset, ready to plan shards from."""

    dataset: str  # imagenet | cifar10 | cifar100 | folder
    image_ext: str  # jpg | png
    classes: list[dict]  # [{"index", "id", "name"}], index = position
    splits: dict[str, list[Item]]
    # CIFAR: exact (mean, std, mean image) of the train split; None -> sampled from the shards.
    exact_stats: tuple[list[float], list[float], np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    # Odd but not fatal findings (e.g. an empty class folder of the `folder` source): printed on stderr
    # and written to warnings.jsonl beside rejected.jsonl. Rows: {"split", "path", "warning"}.
    warnings: list[dict[str, str]] = field(default_factory=list)


class Listed(NamedTuple):
    """A file found in a folder; `problem` is set when it is known not to be an image of the dataset."""

    path: str
    size: int
    problem: str = ""


def hidden_file_problem(name: str) -> str:
    """Why a hidden file is no input image ("" for a visible name)."""
    if name.startswith("._"):
        return "hidden file (AppleDouble ._* metadata written by macOS): not an image of the dataset"
    if name.startswith("."):
        return "hidden file (dot-file such as .DS_Store): not an image of the dataset"
    return ""


def list_files(folder: Path) -> list[Listed]:
    """Everything in `folder` that could be taken for an input, sorted by path: its regular files (hidden ones
    carry their problem) and, carrying theirs, dangling links, special files and every file in a sub-folder
    (class folders are read flat), so that each is either written or listed with its reason."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_file():
                out.append(Listed(e.path, e.stat().st_size, hidden_file_problem(e.name)))
            elif e.is_dir():
                out += _nested_files(Path(e.path), Path(folder))
            elif e.is_symlink():
                target = os.readlink(e.path)
                out.append(Listed(e.path, 0, f"dangling symbolic link: its target {target} does not exist"))
            else:
                out.append(Listed(e.path, 0, "not a regular file (a pipe, socket or device)"))
    out.sort()
    return out


def _nested_files(sub: Path, folder: Path) -> list[Listed]:
    """Every file (and link) under a sub-folder of a class folder, each rejected with the reason."""
    problem = (f"in {sub.relative_to(folder)}/, a sub-folder of its class folder: class folders are read flat "
               f"(move it into {folder} to include it)")
    found = []
    for root, dirs, files in os.walk(sub):  # links to folders are not followed: listed below, not entered
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            found.append(Listed(path, os.lstat(path).st_size, problem))
    return found


def class_dirs(root: Path) -> list[str]:
    """Sorted names of the non-hidden sub-directories of `root`."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_class_tree(root: Path, class_index: dict[str, int]) -> tuple[list[Item], list[Path]]:
    """Items of a class-per-folder tree whose folders must all be known classes (else ValueError), and the
    class folders that hold no image (nothing, or only hidden files) - the caller decides what that means."""
    items: list[Item] = []
    empty: list[Path] = []
    for name in class_dirs(root):
        if name not in class_index:
            raise ValueError(f"{root / name}: class folder not among the {len(class_index)} training classes")
        files = list_files(root / name)
        if all(f.problem for f in files):
            empty.append(root / name)
        items += [Item(class_index[name], f.path, f.size, problem=f.problem) for f in files]
    return items, empty


def empty_folder_message(folder: Path, split: str) -> str:
    return (f"{folder}: empty class folder (no image files in it; hidden files and sub-folders do not count): "
            f"no {split} samples of this class")

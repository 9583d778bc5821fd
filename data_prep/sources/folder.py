"""`folder` source: any class-per-folder image tree (`<src>/<class>/*`, or `<src>/{train,val}/<class>/*`).

An empty class folder keeps its class (index) and is a warning, not an error: such trees are often
work in progress, and the class list is whatever the folders say.
"""

from __future__ import annotations

from pathlib import Path

from ..shards import Item
from . import SourceData, class_dirs, empty_folder_message, list_class_tree


def load_folder(src: Path) -> SourceData:
    """List a class-per-folder tree; classes are the sorted folder names of the training tree."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory")
    split_roots = {"train": src}
    if (src / "train").is_dir() and class_dirs(src / "train"):
        split_roots = {"train": src / "train"}
        if (src / "val").is_dir():
            split_roots["val"] = src / "val"
    names = class_dirs(split_roots["train"])
    if not names:
        raise ValueError(f"{split_roots['train']}: no class folders (expected <class>/<image> files)")
    index = {n: i for i, n in enumerate(names)}
    classes = [{"index": i, "id": n, "name": n} for i, n in enumerate(names)]
    splits: dict[str, list[Item]] = {}
    warnings = []
    for split, root in split_roots.items():
        splits[split], empty = list_class_tree(root, index)
        warnings += [{"split": split, "path": str(d), "warning": empty_folder_message(d, split)} for d in empty]
    return SourceData("folder", "jpg", classes, splits, warnings=warnings)

"""`folder` source: any class-per-folder image tree (`<src>/<class>/*`, or `<src>/{train,val}/<class>/*`)."""

from __future__ import annotations

from pathlib import Path

from . import SourceData, class_dirs, list_class_tree


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
    splits = {split: list_class_tree(root, index) for split, root in split_roots.items()}
    return SourceData("folder", "jpg", classes, splits)

"""`imagenet` source: ILSVRC-2012 in the layouts people have.

(a) official tars extracted: `train/<wnid>/*.JPEG`, flat `val/` + the devkit's
    `data/ILSVRC2012_validation_ground_truth.txt` (1-based ILSVRC2012_IDs) and `data/meta.mat`;
(b) Kaggle: `ILSVRC/Data/CLS-LOC/{train,val}`, `LOC_val_solution.csv`, `LOC_synset_mapping.txt`;
(c) either of the above with val already sorted into `val/<wnid>/` folders.
Class index = position of the WordNet id in sorted order (not the devkit's ILSVRC2012_ID order).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..shards import Item
from . import SourceData, class_dirs, empty_folder_message, list_class_tree, list_files

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")


def _find(src: Path, devkit: Path | None, name: str) -> Path | None:
    """Look for a devkit file where the official and Kaggle layouts put it (shallow; no full-tree walk)."""
    roots = [devkit] if devkit else []
    roots += [src, src / "data", *sorted(src.glob("*/data")), *sorted(src.glob("*"))]
    for root in roots:
        if root is not None and (root / name).is_file():
            return root / name
    return None


def _synsets_from_meta(path: Path) -> dict[int, tuple]:
    """{ILSVRC2012_ID: (wnid, words)} for the 1000 leaf classes of the devkit's meta.mat."""
    import scipy.io  # scipy: only for the ILSVRC devkit's .mat

    try:
        synsets = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
    except Exception as e:
        raise ValueError(f"{path}: cannot read the devkit's synsets: {e}") from e
    names = synsets.dtype.names or ()
    out = {}
    for s in synsets.ravel():
        # meta.mat also lists the WordNet hierarchy's inner nodes; the classes are the leaves.
        if "num_children" in names and int(s["num_children"]) != 0:
            continue
        out[int(s["ILSVRC2012_ID"])] = (str(s["WNID"]), str(s["words"]))
    return out


def _names_from_mapping(path: Path) -> dict[str, str]:
    """{wnid: words} from Kaggle's LOC_synset_mapping.txt (`n01440764 tench, Tinca tinca`)."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            wnid, _, words = line.strip().partition(" ")
            if not wnid.startswith("n"):
                raise ValueError(f"{path}:{n}: expected '<wnid> <words>', got {line!r}")
            out[wnid] = words
    return out


def _flat_val_labels(src: Path, devkit: Path | None, meta: dict[int, tuple]) -> dict[int, str]:
    """{val image number: wnid} from Kaggle's solution CSV or the devkit's ground truth + meta.mat."""
    solution = _find(src, devkit, "LOC_val_solution.csv")
    if solution is not None:
        out = {}
        with open(solution, newline="") as f:
            for row in csv.DictReader(f):
                m = _VAL_NUMBER.search(row["ImageId"])
                if m and row["PredictionString"].split():
                    out[int(m.group(1))] = row["PredictionString"].split()[0]
        return out
    truth = _find(src, devkit, GROUND_TRUTH)
    if truth is None or not meta:
        raise FileNotFoundError(
            f"{src}: val/ is a flat folder but its labels were not found: need LOC_val_solution.csv (Kaggle) "
            f"or the devkit's {GROUND_TRUTH} and meta.mat (pass --devkit DIR)")
    out = {}
    for n, line in enumerate(truth.read_text().split(), start=1):
        if int(line) not in meta:
            raise ValueError(f"{truth}:{n}: ILSVRC2012_ID {line} is not a class in meta.mat")
        out[n] = meta[int(line)][0]
    return out


def _class_tree(root: Path, index: dict[str, int], split: str) -> list[Item]:
    """The items of a class-folder split; an empty class folder is an error: ILSVRC-2012's 1000 classes are
    fixed and every one has images in both splits, so an empty folder means an incomplete copy."""
    items, empty = list_class_tree(root, index)
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise ValueError(f"{empty_folder_message(empty[0], split)}{more} - the ILSVRC-2012 copy is incomplete; "
                         f"re-extract that class")
    return items


def load_imagenet(src: Path, devkit: Path | None = None) -> SourceData:
    """List an ILSVRC-2012 tree in layout (a), (b) or (c); splits train and (when present) val."""
    src = Path(src)
    root = src / "ILSVRC" / "Data" / "CLS-LOC"
    if not root.is_dir():
        root = src
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{src}: no train/ folder (nor ILSVRC/Data/CLS-LOC/train) - not an ILSVRC-2012 tree")
    wnids = class_dirs(root / "train")
    if not wnids:
        raise ValueError(f"{root / 'train'}: no class folders")
    meta_path = _find(src, devkit, "meta.mat")
    meta = _synsets_from_meta(meta_path) if meta_path else {}
    words = {w: name for w, name in meta.values()}
    mapping = _find(src, devkit, "LOC_synset_mapping.txt")
    if mapping is not None:
        words.update(_names_from_mapping(mapping))
    index = {w: i for i, w in enumerate(wnids)}
    classes = [{"index": i, "id": w, "name": words.get(w, w)} for i, w in enumerate(wnids)]
    splits: dict[str, list[Item]] = {"train": _class_tree(root / "train", index, "train")}
    val = root / "val"
    notes = [f"layout: {'kaggle' if root != src else 'official'}"]
    if val.is_dir():
        if class_dirs(val):  # layout (c)
            splits["val"] = _class_tree(val, index, "val")
            notes.append("val: class folders")
        else:
            labels = _flat_val_labels(src, devkit, meta)
            items = []
            for path, size, known_problem in list_files(val):
                m = _VAL_NUMBER.search(Path(path).name)
                wnid = labels.get(int(m.group(1))) if m else None
                # `._ILSVRC2012_val_00000001.JPEG` matches the number but is no image; nor is a dangling link
                if known_problem:
                    items.append(Item(-1, path, size, problem=known_problem))
                elif wnid is None or wnid not in index:
                    problem = "no label for this file in the ground truth" if wnid is None else \
                        f"ground-truth class {wnid} has no train/ folder"
                    items.append(Item(-1, path, size, problem=problem))
                else:
                    items.append(Item(index[wnid], path, size))
            splits["val"] = items
            notes.append("val: flat with ground truth")
    return SourceData("imagenet", "jpg", classes, splits, notes=notes)

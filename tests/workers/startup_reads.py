"""Run under torchrun by tests/pipeline/data/test_loaders.py: what each rank reads of a dataset when training opens it.

    python -m torch.distributed.run ... -m tests.workers.startup_reads OUT ROOT [ROOT ...]

For each dataset ROOT, the rank does what `pipeline.train` does to open its data (`open_data`: the training and
evaluation loaders of the torch backend, the class count) and counts the files it opened under ROOT and their
bytes (an audit hook sees every open; a file's size bounds what was read of it). Writes `<OUT>/rank<r>.json`:
{root: {"files": n, "bytes": b}}.
"""

import json
import os
import sys
from pathlib import Path

import torch

from pipeline import dist
from pipeline.config import load_config
from pipeline.dist import dist_info_from_env
from pipeline.train.setup import open_data
from tests.support import DEMO_CONFIG


def main(out: str, *roots: str) -> None:
    info = dist_info_from_env()
    dist.init_process_group(info, "cpu", timeout_minutes=5)
    opened: list = []
    sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" and isinstance(args[0], str)
                     else None)
    reads = {}
    for root in roots:
        cfg = load_config(DEMO_CONFIG, [f"data.root={root}", "data.backend=torch", "data.num_threads=0",
                                        f"run.out_dir={Path(out) / 'runs'}", f"run.name={Path(root).name}"])
        opened.clear()
        open_data(cfg, info, torch.device("cpu"))
        mine = [path for path in opened if path.startswith(root + os.sep)]
        reads[root] = {"files": len(mine), "bytes": sum(os.path.getsize(path) for path in mine)}
    (Path(out) / f"rank{info.rank}.json").write_text(json.dumps(reads))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

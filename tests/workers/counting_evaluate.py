"""Run under torchrun by tests/pipeline/evaluate/test_evaluate.py: `pipeline.evaluate`'s centre evaluation of a run,
counting the host syncs inside the evaluation loop and its batches on each rank.

    python -m torch.distributed.run ... -m tests.workers.counting_evaluate OUT RUN_DIR [pipeline.evaluate options]

Writes `<out>/rank<r>.json`: {"batches": this rank's batches, "syncs": {call: count} during `evaluate`}.
"""

import json
import sys
from pathlib import Path

import pipeline.evaluate.job as evaluate_job
from pipeline.dist import dist_info_from_env
from pipeline.evaluate import protocols
from pipeline.evaluate.__main__ import main as evaluate_main
from tests.support.host_syncs import HostSyncs


def counting(seen: dict):
    """`protocols.evaluate`, recording into `seen` its batches and the host syncs it made."""
    def counted(predict, batches, **kwargs):
        batches = list(batches)  # loaded first: the loader's own work is not the evaluation's
        with HostSyncs() as syncs:
            result = protocols.evaluate(predict, batches, **kwargs)
        seen.update(batches=len(batches), syncs=dict(syncs.by_call))
        return result
    return counted


def main(out: str, *evaluate_args: str) -> None:
    seen: dict = {}
    evaluate_job.evaluate = counting(seen)
    assert evaluate_main(list(evaluate_args)) == 0
    rank = dist_info_from_env().rank
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Run under torchrun by tests/pipeline/train/test_final_evaluation.py: `python -m pipeline.train CONFIG OVERRIDES`,
where rank 1 alone receives SIGTERM as its final evaluation starts, before its first batch (rank 0 none): the
moment at which a rank leaves the evaluation's loop while the others make its first batch's collectives.

    python -m torch.distributed.run ... -m tests.workers.signal_at_final_evaluation CONFIG [OVERRIDES]
"""

import os
import signal
import sys

import pipeline.train.loop as loop
from pipeline.dist import dist_info_from_env
from pipeline.train.__main__ import main


def signalled_first(evaluate):
    """`evaluate`, with SIGTERM sent to this process before the final evaluation (the one a signal may stop)."""
    def evaluate_after_a_signal(predict, batches, should_stop=None, **kwargs):
        if should_stop is not None:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(predict, batches, should_stop=should_stop, **kwargs)
    return evaluate_after_a_signal


if __name__ == "__main__":
    if dist_info_from_env().rank == 1:
        loop.evaluate = signalled_first(loop.evaluate)
    sys.exit(main(sys.argv[1:]))

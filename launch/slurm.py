"""Where SLURM jobs queued by earlier versions find their callables: submitit pickled them by this module path.

New code imports them from `launch.submit.jobs`.
"""

from launch.submit.jobs import EvalJob, PrepTask, TrainJob

__all__ = ["EvalJob", "PrepTask", "TrainJob"]

"""Where benchmark jobs queued by earlier versions find their callable: submitit pickled it by this module path.

New code imports it from `launch.plan.bench`.
"""

from launch.plan.bench import BenchJob

__all__ = ["BenchJob"]

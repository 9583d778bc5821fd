"""A whole paper table with one command: training, evaluation and report jobs chained with SLURM dependencies
(`chain`), and where a table's runs stand (`status`).

`ReportJob` is importable from here because submitit pickled the report jobs of earlier versions by this path.
"""

from launch.reproduce.chain import ReportJob

__all__ = ["ReportJob"]

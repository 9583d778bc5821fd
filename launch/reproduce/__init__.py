"""A whole paper table with one command: what was asked (`request`), what its runs still need and the jobs chained
with SLURM dependencies (`chain`, `report_job`), the command that decides what to submit (`command`), and where
runs stand (`status`).
"""


def __getattr__(name: str):
    # submitit pickled the report jobs of earlier versions as `launch.reproduce.ReportJob`: found here, loaded only
    # then (the report loads torch, which parsing a command line must not).
    if name == "ReportJob":
        from launch.reproduce.report_job import ReportJob  # noqa: PLC0415 - see above

        return ReportJob
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

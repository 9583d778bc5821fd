"""Runs a training config anywhere: one process, N local processes, or SLURM through submitit."""

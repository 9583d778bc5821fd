"""Running jobs: on SLURM through submitit (`slurm`), in N processes on this machine (`local`); asking SLURM's
queue (`queue`), its partitions (`partition`), and waiting for a job as a user would (`waiting`).
"""

"""What the tests share: paths, running a training, the SLURM minicluster, fixtures' builders, readers of what
the runs wrote."""

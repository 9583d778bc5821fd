"""What the tests share: where the repository is, running a training (`training`) and the launcher (`commands`),
the SLURM minicluster (`slurm`), building datasets for the loaders (`loaders`) and data_prep (`prep`), runs for the
report (`report_runs`) and its figures as drawn (`figures`), counting host syncs (`host_syncs`), reading W&B's
offline files (`wandb_offline`), and a requirement a test cannot meet: skipped here, failed under CI (`ci`)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DEMO_CONFIG = str(REPO / "configs" / "demo" / "digits.yaml")

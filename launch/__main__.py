"""`python -m launch <command> ...`: see `launch.cli`."""

from launch.cli import main
from pipeline.dist.exit_codes import exit_process

if __name__ == "__main__":
    exit_process(main())

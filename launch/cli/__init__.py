"""`python -m launch <command>`: the command line, parsed into the work each command does."""

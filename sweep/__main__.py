"""`python -m sweep ...`: what ./run_train.sh runs (sweep/cli.py)."""
import sys

from sweep.cli import cli

sys.exit(cli())

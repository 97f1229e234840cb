"""The training sweep: the reproduction's runs, their states, a local runner (runs.py), the command line
of ./run_train.sh (cli.py, `python -m sweep`) and the SLURM job array (slurm.py)."""

#!/usr/bin/env bash
# The full reproduction (docs/solution.md §8): 9 configs x (folds 0-3 with seeds 1001, 1002 +
# fold -1 with seeds 2001..2008) = 144 train.py runs, here (one at a time or one per GPU) or as a SLURM
# job array. The list of runs, their states and the runners live in sweep/runs.py (and sweep/slurm.py).
#
#   ./run_train.sh [--configs cfg_2a,cfg_5a] [--folds 0,1] [--gpus 0,1,2,3] [--shard i/n] [--dry-run] \
#                  [--data-dir D] [--output-dir O] [--overrides F.json] [-- train.py args]
#   ./run_train.sh --slurm [--partition P] [--gpus-per-run 1] [--max-parallel N] [--time HH:MM:SS] \
#                  [--signal-grace S] [--data-dir D] [--output-dir O] [--overrides F.json] [-- train.py args]
#   ./run_train.sh --help                    # every option
#
# Options for train.py go after `--` (e.g. `-- --epochs 1`); an unknown option before it is an error.
# Per-config ones go in a JSON file, --overrides F.json: {"*": {...}, "cfg_2a": {"batch_size": 16}} (sweep/overrides.py);
# a run gets "*", then its config's, then the args after `--`, which win. The file is checked before anything starts.
# --data-dir/--output-dir (either spelling, before or after `--`, the last one wins) are relative to the
# folder this is run from. Finished runs are skipped, interrupted ones resumed; each run logs to
# <output_dir>/logs/<cfg>_fold<f>_seed<s>.log. $PYTHON (default: python) runs the sweep and every train.py.
# Ctrl-C: the runs in progress finish their step and save their place. On SLURM a task warned S s before its
# --time limit (default 180) saves its place and requeues itself, so a long run finishes over several slots.
set -euo pipefail
export HMS_SWEEP_CWD="$PWD"  # the caller's folder: sweep/cli.py resolves relative paths against it
cd "$(dirname "$0")"
exec "${PYTHON:-python}" -m sweep "$@"

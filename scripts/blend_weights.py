"""Fit the blend weights and class bias on the configs' out-of-fold logits (docs/solution.md §9) and save them.

    python scripts/blend_weights.py [--data-dir datamount] [--output-dir output] [--configs cfg_1 cfg_5a]
                                    [--first-seed-only] [--out output/blend_weights.json]

Reads <output_dir>/<cfg>/fold{0..3}/seed*/val_logits.csv, averages the seeds of each fold, aligns the
rows to the golden file by label_id, fits, prints each config's OOF KL, the blended OOF KL (every row
predicted by the KFold split that held it out) and the weights/bias in the seed README's format,
and writes the JSON that scripts/predict.py reads plus a bar chart of the KLs next to it.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import blend  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import run_cli  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="datamount", help="folder with train_folded_6k6.csv (golden rows)")
    p.add_argument("--output-dir", default="output", help="training runs: <output_dir>/<cfg>/fold<f>/seed<s>/")
    p.add_list("--configs", default=blend.ALL_CONFIGS, help="configs to blend (default: all nine)")
    p.add_list("--folds", type=int, default=list(blend.BLEND_FOLDS))
    p.add_argument("--first-seed-only", action="store_true",
                   help="use only the lowest-numbered seed of each fold (the reference's choice) instead of the seed mean")
    p.add_argument("--epochs", type=int, default=801)
    p.add_argument("--out", default=None, help="JSON to write (default <output_dir>/blend_weights.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the KL bar chart")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return blend.blend_runs(args.output_dir, args.data_dir, args.configs, tuple(args.folds), args.first_seed_only,
                            args.epochs, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    sys.exit(run_cli(main))

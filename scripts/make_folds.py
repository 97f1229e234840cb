"""train.csv -> train_folded.csv with 4 patient-grouped, class-stratified folds (kept if present)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.folds import FOLD_COLUMNS, make_folds  # noqa: E402
from data.signal import LABEL_COLS  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import atomic_write_csv, read_csv_checked, require_dir, run_cli  # noqa: E402


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default="datamount")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-folds", type=int, default=4)
    ap.add_argument("--force", action="store_true", help="overwrite an existing train_folded.csv")
    args = ap.parse_args(argv)
    data_dir = require_dir(args.data_dir)
    out = data_dir / "train_folded.csv"
    if out.exists() and not args.force:
        print(f"kept existing {out} (pass --force to rebuild it)")
        return
    df = read_csv_checked(data_dir / "train.csv", required=("eeg_id", *FOLD_COLUMNS, *LABEL_COLS), what="train csv")
    folded = make_folds(df, n_folds=args.n_folds, seed=args.seed)
    atomic_write_csv(out, folded)
    per_fold = folded.groupby("fold").agg(rows=("eeg_id", "size"), patients=("patient_id", "nunique"))
    print(f"wrote {out}: {len(folded)} rows; per fold " +
          ", ".join(f"{f}: {r.rows} rows/{r.patients} patients" for f, r in per_fold.iterrows()))


if __name__ == "__main__":
    sys.exit(run_cli(main))

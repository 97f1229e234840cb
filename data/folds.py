"""Patient-grouped, class-stratified folds (docs/solution.md §4): every patient's rows land in one fold."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from utils.io import DataError

FOLD_COLUMNS = ("patient_id", "expert_consensus")


def make_folds(df: pd.DataFrame, n_folds: int = 4, seed: int = 0) -> pd.DataFrame:
    """Copy of df with an int column `fold` in 0..n_folds-1 (StratifiedGroupKFold, shuffled by seed)."""
    missing = [c for c in FOLD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"rows lack column(s) {', '.join(missing)} needed for folds")
    n_patients = df["patient_id"].nunique()
    if n_patients < n_folds:
        raise DataError(f"{n_patients} patient(s) cannot fill {n_folds} folds")
    out = df.copy()
    fold = np.full(len(df), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, idx) in enumerate(splitter.split(np.zeros(len(df)), df["expert_consensus"], df["patient_id"])):
        fold[idx] = k
    out["fold"] = fold
    return out

"""The competition metric (docs/solution.md §2): Kaggle's micro-averaged KL divergence, written once."""
from __future__ import annotations

import numpy as np
import pandas as pd

from data.signal import LABEL_COLS

EPS = 1e-15


class MetricError(ValueError):
    pass


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def votes_to_target(votes: np.ndarray) -> np.ndarray:
    votes = np.asarray(votes, dtype=np.float64)
    total = votes.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise MetricError(f"{int((total <= 0).sum())} row(s) have no votes")
    return votes / total


def kl_divergence(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean over rows of sum_k y*log(y/p), y = 0 cells contribute 0, p clipped to [1e-15, 1-1e-15]."""
    y = np.asarray(target, dtype=np.float64)
    p = np.clip(np.asarray(pred, dtype=np.float64), EPS, 1 - EPS)
    if y.shape != p.shape or y.ndim != 2:
        raise MetricError(f"target shape {y.shape} and prediction shape {p.shape} differ or are not 2-D")
    safe_y = np.where(y > 0, y, 1.0)
    cells = np.where(y > 0, y * np.log(safe_y / p), 0.0)
    return float(cells.sum(axis=1).mean())


def kl_from_logits(target: np.ndarray, logits: np.ndarray) -> float:
    return kl_divergence(target, softmax(np.asarray(logits, dtype=np.float64)))


def score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "eeg_id",
          label_cols=LABEL_COLS, atol: float = 1e-4) -> float:
    """Kaggle's score: solution holds votes (or shares), submission probabilities; matched by id."""
    for name, df in (("solution", solution), ("submission", submission)):
        missing = [c for c in [row_id_column_name, *label_cols] if c not in df.columns]
        if missing:
            raise MetricError(f"{name} is missing column(s) {', '.join(missing)}")
    if submission[row_id_column_name].duplicated().any():
        raise MetricError("submission has duplicated ids")
    sol_ids, sub_ids = set(solution[row_id_column_name]), set(submission[row_id_column_name])
    if sol_ids != sub_ids:
        raise MetricError(f"ids differ: {len(sol_ids - sub_ids)} missing from the submission, "
                          f"{len(sub_ids - sol_ids)} not in the solution")
    sub = submission.set_index(row_id_column_name).loc[solution[row_id_column_name], label_cols].to_numpy(np.float64)
    if not np.isfinite(sub).all():
        raise MetricError("submission has non-finite values")
    sums = sub.sum(axis=1)
    bad = np.abs(sums - 1) > atol
    if bad.any():
        raise MetricError(f"{int(bad.sum())} submission row(s) do not sum to 1 (e.g. {sums[bad][0]:.6f})")
    target = votes_to_target(solution[label_cols].to_numpy())
    return kl_divergence(target, sub)


def prior_kl(train_targets: np.ndarray, val_targets: np.ndarray) -> float:
    """KL of predicting the training rows' mean vote share for every validation row (the baseline)."""
    prior = np.asarray(train_targets, dtype=np.float64).mean(axis=0)
    val = np.asarray(val_targets, dtype=np.float64)
    return kl_divergence(val, np.broadcast_to(prior, val.shape))


def oracle_kl(rows_df: pd.DataFrame, data_dir) -> float | None:
    """KL of predicting each row's latent class probabilities (synthetic data only: the best any
    model can score on these rows); None when <data_dir>/synthetic_latent.csv is absent."""
    from pathlib import Path

    from utils.io import DataError, read_csv_checked

    path = Path(data_dir) / "synthetic_latent.csv"
    if not path.is_file():
        return None
    latent = read_csv_checked(path, required=("label_id", *LABEL_COLS), what="latent probabilities")
    if "label_id" not in rows_df.columns:
        raise MetricError("rows have no label_id column")
    lat = latent.set_index("label_id")[list(LABEL_COLS)]
    missing = ~rows_df["label_id"].isin(lat.index)
    if missing.any():
        raise DataError(f"{path}: {int(missing.sum())} row(s) have no latent probabilities "
                        f"(e.g. label_id {rows_df['label_id'][missing].iloc[0]}); regenerate the data")
    pred = lat.loc[rows_df["label_id"]].to_numpy(np.float64)
    return kl_divergence(votes_to_target(rows_df[list(LABEL_COLS)].to_numpy()), pred)

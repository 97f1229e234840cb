"""The competition metric (docs/solution.md §2): Kaggle's micro-averaged KL divergence, written once.

Plain arrays and frames: the label columns are the caller's (data/signal.py holds the competition's)."""
from __future__ import annotations

import numpy as np
import pandas as pd

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
          label_cols=None, atol: float = 1e-4) -> float:
    """Kaggle's score: solution holds votes (or shares), submission probabilities; matched by id. The
    classes are `label_cols`, by default every column of the solution but the id (as Kaggle's metric)."""
    if label_cols is None:
        label_cols = [c for c in solution.columns if c != row_id_column_name]
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

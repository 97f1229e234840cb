"""The Kaggle submission: the ensemble on every eeg of <data_dir>/test.csv, in sample_submission's columns and
order, checked against Kaggle's rules before it is written."""
from __future__ import annotations

import numpy as np
import pandas as pd

from data.base import eeg_dir_for
from data.eeg_store import EEGStore
from data.signal import FS, LABEL_COLS, WINDOW
from inference.ensemble import describe_amp, ensemble_probs, load_ensemble, resolve_device
from utils.io import DataError, read_csv_checked, require_dir, warn


def check_submission(sub: pd.DataFrame, ids, columns, where: str = "submission") -> None:
    """Kaggle's rules: the expected columns, one row per test id, finite probabilities summing to 1."""
    if list(sub.columns) != list(columns):
        raise DataError(f"{where}: columns {list(sub.columns)} differ from {list(columns)}")
    if sub["eeg_id"].duplicated().any() or set(sub["eeg_id"]) != set(ids) or len(sub) != len(set(ids)):
        raise DataError(f"{where}: eeg_ids do not match test.csv ({len(sub)} rows, {len(set(ids))} test eegs)")
    p = sub[LABEL_COLS].to_numpy(np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError(f"{where}: probabilities outside [0, 1] or not finite")
    worst = float(np.abs(p.sum(axis=1) - 1).max())
    if worst > 1e-6:
        raise DataError(f"{where}: a row sums to 1 {worst:+.2e}")


def warn_test_lengths(test_df, cfg, cache_dir=None) -> None:
    """Kaggle's test recordings are exactly 50 s: say so when one is not (first 50 s scored / padded)."""
    store = EEGStore(eeg_dir_for(cfg, "test"), cache_dir)
    for eeg_id in test_df["eeg_id"]:
        n = store.length(eeg_id)
        if n > WINDOW:
            warn(f"eeg {eeg_id}: {n / FS:.1f} s long; only its first 50 s is scored (Kaggle's test files are "
                 f"exactly 50 s; `--recording {store.source(eeg_id)}` scores all of it)")
        elif n < WINDOW:
            warn(f"eeg {eeg_id}: {n / FS:.1f} s long, shorter than the 50 s window: zero-padded by "
                 f"{(WINDOW - n) / FS:.1f} s")


def predict_submission(data_dir, output_dir, blend_path=None, device="auto", batch_size=16, num_workers=0,
            cache_dir=None, amp_dtype=None) -> tuple[pd.DataFrame, dict]:
    """The submission frame (sample_submission's columns and order) and each config's mean logits.
    `amp_dtype` (float16, bfloat16, float32) replaces each run's own autocast dtype (inference/ensemble.py)."""
    dev = resolve_device(device)  # first: an unusable device is one line before anything is read
    data_dir = require_dir(data_dir)
    weights, runs = load_ensemble(output_dir, blend_path, data_dir, cache_dir)
    test = read_csv_checked(data_dir / "test.csv", required=["eeg_id"], what="test.csv")
    if test.empty:
        raise DataError(f"{data_dir / 'test.csv'}: no rows")
    test_df = test.drop_duplicates("eeg_id").reset_index(drop=True)
    sample_path = data_dir / "sample_submission.csv"
    if sample_path.is_file():
        sample = read_csv_checked(sample_path, required=["eeg_id", *LABEL_COLS], what="sample submission")
        columns, order = list(sample.columns), sample["eeg_id"].to_numpy()
        if set(order) != set(test_df["eeg_id"]):
            raise DataError(f"{sample_path}: eeg_ids differ from test.csv")
    else:
        columns, order = ["eeg_id", *LABEL_COLS], test_df["eeg_id"].to_numpy()
    n_runs = sum(len(r) for r in runs.values())
    print(f"{len(test_df)} recording(s), {len(runs)} config(s), {n_runs} run(s), device {dev}, "
          f"{describe_amp(runs, dev, amp_dtype)}")
    warn_test_lengths(test_df, next(iter(runs.values()))[0][1], cache_dir)
    probs, logits = ensemble_probs(weights, runs, test_df, dev, batch_size, num_workers, amp_dtype=amp_dtype)
    sub = pd.DataFrame(probs, columns=LABEL_COLS)
    sub.insert(0, "eeg_id", test_df["eeg_id"].to_numpy())
    sub = sub.set_index("eeg_id").loc[order].reset_index()[columns]
    check_submission(sub, test_df["eeg_id"], columns)
    return sub, logits

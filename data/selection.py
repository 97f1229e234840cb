"""Row selection of docs/solution.md §4 (the reference's filter_train), vectorised.

Within a group (same eeg_id and exact vote vector) the kept row is the one whose 600 s spectrogram
window overlaps most with the group's windows. With integer offsets the bin-counting definition
equals sum_j max(0, 600 - |o_i - o_j|), which sorted offsets and prefix sums give in O(n log n).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.signal import LABEL_COLS
from utils.io import DataError, atomic_write_csv, read_csv_checked

SPAN = 600  # seconds of spectrogram window
OFFSET_COL = "spectrogram_label_offset_seconds"
REQUIRED = ("eeg_id", OFFSET_COL, *LABEL_COLS)
# output file -> (filter_ct, one row per eeg)
TRAINING_SETS = {"train_folded_6k6.csv": (8, True), "train_folded_6k6c.csv": (8, False),
                 "train_folded_6k6c_1up.csv": (0, False)}


def overlap_scores(groups: np.ndarray, offsets: np.ndarray, span: int = SPAN) -> np.ndarray:
    """For each row, sum over rows j of its group of max(0, span - |o_i - o_j|) (itself included)."""
    groups = np.asarray(groups, dtype=np.int64)
    o = np.asarray(offsets, dtype=np.int64)
    if len(o) == 0:
        return np.zeros(0, dtype=np.int64)
    if o.min() < 0:
        raise DataError("negative spectrogram offsets")
    big = int(o.max()) + 2 * span + 1  # keeps groups apart on one sorted key
    key = groups * big + o
    order = np.argsort(key, kind="stable")
    ks, os_ = key[order], o[order]
    prefix = np.concatenate([[0], np.cumsum(os_)])
    lo = np.searchsorted(ks, key - (span - 1), "left")
    mid = np.searchsorted(ks, key, "right")
    hi = np.searchsorted(ks, key + (span - 1), "right")
    left = (mid - lo) * (span - o) + (prefix[mid] - prefix[lo])
    right = (hi - mid) * (span + o) - (prefix[hi] - prefix[mid])
    return left + right


def select_rows(df: pd.DataFrame, filter_ct: int, one_per_eeg: bool) -> pd.DataFrame:
    """Rows with vote sum > filter_ct; one per (eeg_id, votes) group, groups in order of first
    appearance; optionally only the first group's row of each eeg."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"rows lack column(s) {', '.join(missing)}")
    sub = df[df[LABEL_COLS].sum(axis=1) > filter_ct].reset_index(drop=True)
    if sub.empty:
        return sub
    group = sub.groupby(["eeg_id", *LABEL_COLS], sort=False).ngroup().to_numpy()
    offsets = np.floor(sub[OFFSET_COL].to_numpy(np.float64)).astype(np.int64)
    score = overlap_scores(group, offsets)
    pos = np.arange(len(sub))
    order = np.lexsort((pos, -score, group))  # by group, best score first, earliest row on ties
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    kept = sub.iloc[order[first]]  # already in group order = order of first appearance
    if one_per_eeg:
        kept = kept.drop_duplicates("eeg_id", keep="first")
    return kept.reset_index(drop=True)


def write_training_sets(data_dir) -> dict:
    """train_folded.csv -> the three selections of docs/solution.md §4; returns {file name: rows written}."""
    data_dir = Path(data_dir)
    df = read_csv_checked(data_dir / "train_folded.csv", required=(*REQUIRED, "fold"), what="folded train csv")
    counts = {}
    for name, (ct, one) in TRAINING_SETS.items():
        out = select_rows(df, ct, one)
        atomic_write_csv(data_dir / name, out)
        counts[name] = len(out)
    return counts

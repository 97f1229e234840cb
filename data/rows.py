"""The rows one run trains and validates on: a fold's training rows and its validation rows, checked."""
from __future__ import annotations

import numpy as np
import pandas as pd

from data.signal import LABEL_COLS
from utils.config import ConfigError
from utils.io import DataError, read_csv_checked, require_dir


def read_rows(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train rows: fold != f (fold -1: all); validation rows: golden rows of fold f (fold -1: fold 0)."""
    data_dir = require_dir(cfg.data_dir)
    need = ("eeg_id", "label_id", "eeg_label_offset_seconds", "fold", *LABEL_COLS)
    train = read_csv_checked(data_dir / cfg.train_df, need, what="training csv")
    val = read_csv_checked(data_dir / cfg.val_df, need, what="validation csv")
    folds = sorted(int(f) for f in train["fold"].unique())
    if cfg.fold != -1 and cfg.fold not in folds:
        raise ConfigError(f"bad value for --fold: {cfg.fold} is not a fold of {data_dir / cfg.train_df} "
                          f"(folds {folds}; -1 trains on all rows)")
    val_fold = 0 if cfg.fold == -1 else cfg.fold
    train = train if cfg.fold == -1 else train[train["fold"] != cfg.fold]
    val = val[val["fold"] == val_fold]
    if cfg.max_train_rows:
        train = train.head(cfg.max_train_rows)
    if cfg.max_val_rows:
        val = val.head(cfg.max_val_rows)
    if len(train) == 0:
        raise DataError(f"{data_dir / cfg.train_df}: no training rows for fold {cfg.fold}")
    if len(val) == 0:
        raise DataError(f"{data_dir / cfg.val_df}: no validation rows in fold {val_fold}")
    if cfg.fold != -1:
        check_no_leak(train, val, cfg.fold, data_dir / cfg.train_df, data_dir / cfg.val_df)
    return train.reset_index(drop=True), val.reset_index(drop=True)


def check_no_leak(train: pd.DataFrame, val: pd.DataFrame, fold: int, train_path, val_path) -> None:
    """A patient (or recording) on both sides of a fold would make its validation score a lie."""
    for col in ("patient_id", "eeg_id"):
        if col in train.columns and col in val.columns:
            shared = np.intersect1d(train[col].unique(), val[col].unique())
            if len(shared):
                raise DataError(f"fold {fold}: {len(shared)} {col} value(s) in both the training rows ({train_path}) "
                                f"and the validation rows ({val_path}), e.g. {col} {shared[0]}; every patient "
                                f"must sit in one fold (make the folds with scripts/make_folds.py)")

"""Folds: patients never split, classes spread over folds, same seed same folds, existing file kept."""
import numpy as np
import pandas as pd
import pytest

from data.folds import make_folds
from data.signal import CLASSES, LABEL_COLS
from scripts.make_folds import main as make_folds_main
from utils.io import DataError


def rows(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 12, n_patients)
    pid = np.repeat(rng.choice(10**5, n_patients, replace=False), per)
    cls = rng.choice(CLASSES, len(pid), p=[0.1, 0.15, 0.15, 0.1, 0.1, 0.4])
    df = pd.DataFrame(dict(eeg_id=np.arange(len(pid)), patient_id=pid, expert_consensus=cls))
    for c in LABEL_COLS:
        df[c] = 1
    return df


def test_folds_group_patients_and_balance():
    df = make_folds(rows(), seed=0)
    assert df["fold"].dtype == np.int64 and set(df["fold"]) == {0, 1, 2, 3}
    assert (df.groupby("patient_id")["fold"].nunique() == 1).all()
    sizes = df["fold"].value_counts()
    assert sizes.max() < 1.6 * sizes.min()
    share = pd.crosstab(df["fold"], df["expert_consensus"], normalize="index")["Other"]
    assert share.max() - share.min() < 0.15  # stratified as far as grouping allows


def test_folds_deterministic_per_seed():
    df = rows()
    a, b, c = make_folds(df, seed=0), make_folds(df, seed=0), make_folds(df, seed=1)
    assert a["fold"].equals(b["fold"])
    assert not a["fold"].equals(c["fold"])


def test_too_few_patients():
    with pytest.raises(DataError, match="2 patient"):
        make_folds(rows(2), n_folds=4)


def test_script_keeps_existing_unless_forced(tmp_path, capsys):
    rows().to_csv(tmp_path / "train.csv", index=False)
    make_folds_main(["--data-dir", str(tmp_path)])
    first = (tmp_path / "train_folded.csv").read_bytes()
    user = pd.read_csv(tmp_path / "train_folded.csv").assign(fold=0)
    user.to_csv(tmp_path / "train_folded.csv", index=False)  # a user-supplied file
    make_folds_main(["--data-dir", str(tmp_path), "--seed", "3"])
    assert "kept existing" in capsys.readouterr().out
    assert (pd.read_csv(tmp_path / "train_folded.csv")["fold"] == 0).all()
    make_folds_main(["--data-dir", str(tmp_path), "--force"])
    assert (tmp_path / "train_folded.csv").read_bytes() == first

"""Bad input gives one line naming the file and the fault; the scripts exit with code 2."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data.selection import write_training_sets
from data.eeg_store import read_eeg_parquet
from utils.io import DataError

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True,
                         text=True, timeout=120)
    return res.returncode, res.stderr.strip()


def test_missing_datamount(tmp_path):
    missing = tmp_path / "datamount"
    for script in ("filter_train.py", "make_folds.py"):
        code, err = run(script, "--data-dir", str(missing))
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error: ") and str(missing) in err and "not found" in err


def test_train_csv_without_votes(tmp_path):
    pd.DataFrame(dict(eeg_id=[1, 2], patient_id=[1, 2], expert_consensus=["LPD", "GPD"])).to_csv(
        tmp_path / "train.csv", index=False)
    code, err = run("make_folds.py", "--data-dir", str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.csv" in err and "missing column(s)" in err and "seizure_vote" in err
    pd.read_csv(tmp_path / "train.csv").to_csv(tmp_path / "train_folded.csv", index=False)
    with pytest.raises(DataError, match=r"train_folded\.csv: missing column\(s\) spectrogram_label_offset"):
        write_training_sets(tmp_path)


def test_unreadable_parquet(tmp_path):
    bad = tmp_path / "123.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as err:
        read_eeg_parquet(bad)
    assert str(bad) in str(err.value) and "unreadable parquet" in str(err.value)
    assert "\n" not in str(err.value)


def test_generator_refuses_existing_dataset(tmp_path):
    (tmp_path / "train.csv").write_text("eeg_id\n1\n")
    code, err = run("make_synthetic_data.py", "--out", str(tmp_path), "--n-patients", "1")
    assert code == 2 and "already holds a dataset" in err and "--force" in err
    assert (tmp_path / "train.csv").read_text() == "eeg_id\n1\n"

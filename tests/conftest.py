"""Shared fixtures: small recordings in the competition format, written to a temporary folder.

Everything the suite writes to the temp folder (pytest's tmp_path, subprocesses' temp files, torch's
compile cache) goes into one session folder, removed when the suite passes; anything else left there
fails the session, so a test that leaks files is noticed.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.signal import EEG_COLUMNS, LABEL_COLS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "hms_real_sample"

SESSION_TMP = Path(tempfile.mkdtemp(prefix="hms-tests-"))
KNOWN_CACHES = ("torchinductor", "triton")  # set below; removed with the folder
EXIT_CLEANED = ("pymp-",)  # multiprocessing's own folders, which it removes at exit
os.environ["TMPDIR"] = tempfile.tempdir = str(SESSION_TMP)  # subprocesses inherit it
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(SESSION_TMP / "torchinductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(SESSION_TMP / "triton"))


_CLEAN = {"remove": False}


@atexit.register
def _remove_session_tmp() -> None:  # registered first, so it runs after pytest's own exit handlers
    if _CLEAN["remove"]:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """A passing suite removes the session's temp folder at exit; stray files left there fail it."""
    stray = sorted(p.name for p in SESSION_TMP.iterdir()
                   if not p.name.startswith(("pytest-of-", *EXIT_CLEANED)) and p.name not in KNOWN_CACHES)
    if exitstatus == 0 and stray:
        print(f"\nerror: the tests left {len(stray)} entr(y/ies) in the temp folder {SESSION_TMP}: {', '.join(stray[:5])}")
        session.exitstatus = 1
    elif exitstatus == 0:
        _CLEAN["remove"] = True
    else:
        print(f"\n(temp files of this failed session kept in {SESSION_TMP})")


def write_recording(path: Path, n_samples: int, seed: int = 0, nan_rows: slice | None = None) -> np.ndarray:
    """Random-walk-ish EEG (uV) in Kaggle's column order, float32; returns the array written."""
    rng = np.random.default_rng(seed)
    x = (np.cumsum(rng.normal(0, 3, (n_samples, len(EEG_COLUMNS))), axis=0) * 0.2
         + rng.normal(0, 20, (n_samples, len(EEG_COLUMNS)))).astype(np.float32)
    if nan_rows is not None:
        x[nan_rows] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(x, columns=EEG_COLUMNS).to_parquet(path, index=False)
    return x


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A data folder with 4 train recordings (60-130 s), a train csv of 8 rows and 2 test recordings."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        eeg_id = 1000 + i
        n = 200 * (60 + 25 * i)
        write_recording(tmp_path / "train_eegs" / f"{eeg_id}.parquet", n, seed=i)
        for k, off in enumerate([0, (n // 200 - 50) // 2]):
            votes = rng.integers(0, 4, 6)
            votes[rng.integers(0, 6)] += 3
            rows.append(dict(eeg_id=eeg_id, eeg_sub_id=k, eeg_label_offset_seconds=float(off),
                             spectrogram_id=eeg_id + 7, spectrogram_sub_id=k,
                             spectrogram_label_offset_seconds=float(off), label_id=10 * eeg_id + k,
                             patient_id=i, expert_consensus="Other",
                             **{c: int(v) for c, v in zip(LABEL_COLS, votes)}, fold=i % 4))
    df = pd.DataFrame(rows)
    for name in ("train.csv", "train_folded.csv", "train_folded_6k6.csv", "train_folded_6k6c.csv",
                 "train_folded_6k6c_1up.csv"):
        df.to_csv(tmp_path / name, index=False)
    for j in range(2):
        write_recording(tmp_path / "test_eegs" / f"{2000 + j}.parquet", 10_000, seed=10 + j)
    pd.DataFrame(dict(spectrogram_id=[1, 2], eeg_id=[2000, 2001], patient_id=[5, 6])).to_csv(
        tmp_path / "test.csv", index=False)
    return tmp_path


@pytest.fixture
def shared_sample() -> Path:
    """The real competition example files; tests using it skip when ../shared is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/hms_real_sample not present")
    return SHARED

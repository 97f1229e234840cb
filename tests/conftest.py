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

from data.signal import EEG_COLUMNS, FS, LABEL_COLS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "hms_real_sample"

SESSION_TMP = Path(tempfile.mkdtemp(prefix="hms-tests-"))
KNOWN_CACHES = ("torchinductor", "triton")  # set below; removed with the folder
# folders that libraries make for themselves (multiprocessing's, torch's compile cache and torchrun's logs
# in processes started by SLURM or torchrun): removed with the session folder, not counted as strays
TOOL_DIRS = ("pymp-", "torchinductor_", "torchelastic_")
# `import wandb` (timm imports it when it is installed) makes these two temp folders in every process
TOOL_DIR_SUFFIXES = ("wandb-artifacts", "wandb-media")
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
                   if not p.name.startswith(("pytest-of-", *TOOL_DIRS)) and not p.name.endswith(TOOL_DIR_SUFFIXES)
                   and p.name not in KNOWN_CACHES)
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


# --- your own recordings: synthetic signals and EDF files as clinical systems write them ------------------
CLINICAL = [f"EEG {e.upper()}-REF" for e in EEG_COLUMNS[:19]]  # e.g. a Natus/XLTEK EDF export


def synthetic(seconds: float, seed: int = 0) -> np.ndarray:
    """(T, 20) float32 uV at 200 Hz in EEG_COLUMNS order: the synthetic generator's background + EKG."""
    from data.synthetic import background, ekg

    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    x = np.empty((n, 20), np.float32)
    x[:, :19] = background(rng, n) + rng.normal(0, 20, 19).astype(np.float32)
    x[:, 19] = ekg(rng, n)
    return x


def write_edf(path, x, labels, sfreq, unit: str = "uV") -> None:
    """An EDF as a clinical system writes it: 16-bit samples, physical range = each channel's min..max."""
    import edfio

    signals = [edfio.EdfSignal(np.asarray(x[:, i], np.float64), sampling_frequency=sfreq, label=lab,
                               physical_dimension=unit) for i, lab in enumerate(labels)]
    edfio.Edf(signals).write(path)


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A data folder with 4 train recordings (60-130 s), a train csv of 8 rows and 2 test recordings."""
    return write_tiny_data(tmp_path)


def write_tiny_data(tmp_path: Path) -> Path:
    """tiny_data's folder, written into `tmp_path` (for fixtures of a wider scope)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
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


def grow(data: Path, train_copies: int, val_copies: int) -> Path:
    """More rows over tiny_data's recordings (ddp_train.csv, ddp_val.csv): copies of the rows with new label_ids (same patients and folds)."""
    for src, dst, copies in (("train_folded_6k6c_1up.csv", "ddp_train.csv", train_copies),
                             ("train_folded_6k6.csv", "ddp_val.csv", val_copies)):
        df = pd.read_csv(data / src)
        pd.concat([df.assign(label_id=df["label_id"] * 100 + k) for k in range(copies)],
                  ignore_index=True).to_csv(data / dst, index=False)
    return data


@pytest.fixture
def shared_sample() -> Path:
    """The real competition example files; tests using it skip when ../shared is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/hms_real_sample not present")
    return SHARED


# --- trained-run folders for inference tests (tiny models, random weights) ------------------------------
TINY = {"cfg_5a": ["--backbone", "test_efficientnet", "--pretrained", "False"],
        "cfg_2a": ["--frontend_filters", "16", "--sq_dim", "32", "--sq_layers", "1"]}


def tiny_cfg(name, fold=0, seed=1, output_dir="out"):
    from utils.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(name), TINY[name])
    cfg.fold, cfg.seed, cfg.output_dir = fold, seed, str(output_dir)
    return cfg


def make_run(output_dir: Path, name: str, fold: int, seed: int) -> Path:
    """A run folder as train.py writes it: randomly initialised model (seeded), resolved config."""
    import json

    import torch

    from engine.build import build_model
    from utils.config import cfg_to_dict

    cfg = tiny_cfg(name, fold, seed, output_dir)
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # make the runs' outputs clearly different
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = output_dir / name / f"fold{fold}" / f"seed{seed}"
    run.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 1}, run / "checkpoint.pth")
    (run / "config.json").write_text(json.dumps(cfg_to_dict(cfg)))
    return run


@pytest.fixture
def small_ensemble(tmp_path):
    """One small 1D run (random weights) and its blend file: cheap enough to score many windows."""
    from inference import blend

    out = tmp_path / "out1d"
    make_run(out, "cfg_2a", 0, 1)
    blend.save_blend(out / blend.BLEND_FILE, ["cfg_2a"], [1.0], [0.0] * 6, {})
    return out

"""What every dataset module shares: rows -> 50 s window (with the training shift), targets, RNG.

Per-item randomness: a training item is fetched with the key (epoch, row) (data/sampler.py) and draws
its augmentations from `utils.seed.item_rng(cfg.seed, epoch, row)`, so they depend only on the run's
seed, the epoch and the row: not on the DataLoader worker count, the machine or the rank layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from data.eeg_store import EEGStore
from data.signal import FS, LABEL_COLS, MONTAGE_ELECTRODES
from utils.io import DataError
from utils.seed import item_rng

MODES = ("train", "val", "test")


def eeg_dir_for(cfg, mode: str) -> Path:
    return Path(cfg.data_dir) / (cfg.test_eeg_dir if mode == "test" else cfg.train_eeg_dir)


def window_start(offset: int, rec_len: int, window: int, shift_max: int, rng) -> tuple[int, int]:
    """(start, center) of the model window. Training: start = int(uniform(offset - shift, offset + shift)),
    as the reference draws it (truncated toward zero, so offset + shift itself never comes up), then
    clipped to the file; center = window // 2 + (offset - start) marks the label centre."""
    if rng is None or shift_max <= 0:
        start = offset
    else:
        start = int(rng.uniform(offset - shift_max, offset + shift_max))
    start = int(np.clip(start, 0, max(rec_len - window, 0)))
    return start, window // 2 + (offset - start)


class EEGWindowDataset(Dataset):
    """Base: subclasses implement `transform(x, center, rng, idx) -> dict` on the raw (T, 20) window."""

    def __init__(self, df: pd.DataFrame, cfg, mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if "eeg_id" not in df.columns:
            raise DataError("rows have no eeg_id column")
        self.cfg, self.mode, self.training = cfg, mode, mode == "train"
        self.df = df.reset_index(drop=True)
        self.store = EEGStore(eeg_dir_for(cfg, mode), cfg.cache_dir)
        self.eeg_ids = self.df["eeg_id"].to_numpy(np.int64)
        if "eeg_label_offset_seconds" in self.df.columns:  # test mode too: windows of a long recording
            self.offsets = np.round(self.df["eeg_label_offset_seconds"].to_numpy(np.float64) * FS).astype(np.int64)
        else:
            self.offsets = np.zeros(len(self.df), dtype=np.int64)  # Kaggle's test recordings are exactly 50 s
        if all(c in self.df.columns for c in LABEL_COLS):
            votes = self.df[LABEL_COLS].to_numpy(np.float32)
            total = votes.sum(axis=1, keepdims=True)
            self.targets = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
        elif mode == "test":
            self.targets = np.zeros((len(self.df), len(LABEL_COLS)), dtype=np.float32)
        else:
            raise DataError(f"{mode} rows lack the vote columns {', '.join(LABEL_COLS)}")
        self._silent = {}  # eeg_id -> the montage electrodes are NaN throughout the recording

    def __len__(self) -> int:
        return len(self.df)

    def item_rng(self, epoch: int, idx: int):
        """The training item's Generator (None in val/test: no augmentation). An unseeded config
        (seed < 0, e.g. a dataset built outside train.py) draws a fresh stream from torch's RNG."""
        if not self.training:
            return None
        seed = getattr(self.cfg, "seed", -1)
        if seed is None or seed < 0:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return item_rng(seed, epoch, idx)

    def raw_window(self, idx: int, rng) -> tuple[np.ndarray, int]:
        """(window (cfg.window_len, 20) float32 with NaN kept, center). A recording shorter than the
        window is padded with NaN at its end (so with zeros after NaN -> 0): a documented fallback."""
        cfg = self.cfg
        eeg_id = self.eeg_ids[idx]
        rec_len = self.store.length(eeg_id)
        offset = int(self.offsets[idx])
        if offset >= rec_len:
            raise DataError(f"{self.store.source(eeg_id)}: label offset {offset / FS:.1f} s is past the "
                            f"recording's end ({rec_len / FS:.1f} s)")
        start, center = window_start(offset, rec_len, cfg.window_len, cfg.shift_max if rng is not None else 0, rng)
        x = self.store.window(eeg_id, start, cfg.window_len)
        if len(x) < cfg.window_len:
            x = np.concatenate([x, np.full((cfg.window_len - len(x), x.shape[1]), np.nan, np.float32)])
        return x, center

    def check_signal(self, x: np.ndarray, idx: int) -> None:
        """A window whose montage electrodes are all NaN becomes zeros (a gap), unless the whole
        recording is NaN there: that recording has no signal at all and is bad data."""
        if not np.isnan(x[:, MONTAGE_ELECTRODES]).all():
            return
        eeg_id = int(self.eeg_ids[idx])
        silent = self._silent.get(eeg_id)
        if silent is None:
            silent = self._silent[eeg_id] = self.store.all_nan(eeg_id, MONTAGE_ELECTRODES)
        if silent:
            raise DataError(f"{self.store.source(eeg_id)}: recording is NaN throughout (no signal)")

    def transform(self, x: np.ndarray, center: int, rng, idx: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, key) -> dict:
        """key: a row index, or (epoch, row) from the training sampler (a bare row is epoch curr_epoch)."""
        epoch, idx = key if isinstance(key, tuple) else (getattr(self.cfg, "curr_epoch", 0), key)
        idx = int(idx)
        rng = self.item_rng(epoch, idx)
        x, center = self.raw_window(idx, rng)
        self.check_signal(x, idx)
        out = self.transform(x, center, rng, idx)
        out.setdefault("target", torch.from_numpy(self.targets[idx]))
        out.setdefault("center", torch.tensor(out.pop("_center", center), dtype=torch.long))
        return out

"""EEG layout, double-banana montage, left/right flip and the causal Butterworth band-pass (docs/solution.md §§1, 5).

Written once here; the datasets, the synthetic generator, inference and the plots import it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

FS = 200  # samples per second
WINDOW = 10_000  # 50 s model window
EEG_COLUMNS = ["Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz",
               "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2", "EKG"]
LABEL_COLS = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
CLASSES = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"]
# column names of saved logits (validation and inference files), in LABEL_COLS order
LOGIT_COLS = [f"logit_{c.split('_')[0]}" for c in LABEL_COLS]

# 16 bipolar channels, left and right alternating: even index = left, odd = right hemisphere.
MONTAGE = [("Fp1", "F7"), ("Fp2", "F8"), ("F7", "T3"), ("F8", "T4"), ("T3", "T5"), ("T4", "T6"),
           ("T5", "O1"), ("T6", "O2"), ("Fp1", "F3"), ("Fp2", "F4"), ("F3", "C3"), ("F4", "C4"),
           ("C3", "P3"), ("C4", "P4"), ("P3", "O1"), ("P4", "O2")]
MONTAGE_NAMES = [f"{a}-{b}" for a, b in MONTAGE]
_IDX = {c: i for i, c in enumerate(EEG_COLUMNS)}
MONTAGE_A = np.array([_IDX[a] for a, _ in MONTAGE])
MONTAGE_B = np.array([_IDX[b] for _, b in MONTAGE])

LR_PAIRS = [("Fp1", "Fp2"), ("F3", "F4"), ("C3", "C4"), ("P3", "P4"),
            ("F7", "F8"), ("T3", "T4"), ("T5", "T6"), ("O1", "O2")]
# Column permutation that mirrors the head: x[:, ELECTRODE_FLIP] swaps each left/right pair;
# Fz, Cz, Pz and EKG stay.
ELECTRODE_FLIP = np.arange(len(EEG_COLUMNS))
for _l, _r in LR_PAIRS:
    ELECTRODE_FLIP[_IDX[_l]], ELECTRODE_FLIP[_IDX[_r]] = _IDX[_r], _IDX[_l]
# Bipolar-channel permutation that swaps hemispheres (even <-> odd), as ds_2 does.
BIPOLAR_FLIP = np.arange(16).reshape(8, 2)[:, ::-1].reshape(-1)

# Electrodes the montage reads (19 EEG electrodes minus Fz, Cz, Pz): a window is silent when all are NaN.
MONTAGE_ELECTRODES = np.union1d(MONTAGE_A, MONTAGE_B)

# Spectrogram chains of the competition's spectrogram files (docs/solution.md §1).
CHAINS = {"LL": ["Fp1", "F7", "T3", "T5", "O1"], "RL": ["Fp2", "F8", "T4", "T6", "O2"],
          "LP": ["Fp1", "F3", "C3", "P3", "O1"], "RP": ["Fp2", "F4", "C4", "P4", "O2"]}


def to_bipolar(x: np.ndarray) -> np.ndarray:
    """(T, 20 or 19) electrode signals -> (T, 16) double-banana channels (first minus second)."""
    return x[:, MONTAGE_A] - x[:, MONTAGE_B]


@lru_cache(maxsize=256)
def butter_coeffs(low: float, high: float, order: int, fs: float = FS):
    """Band-pass Butterworth (b, a); cached because the augmentations reuse a few settings a lot."""
    nyq = 0.5 * fs
    from scipy.signal import butter  # imported here: light modules (the sweep) import this file's constants

    return butter(order, [low / nyq, high / nyq], btype="band")


def bandpass(x: np.ndarray, low: float, high: float, order: int, fs: float = FS, axis: int = 0) -> np.ndarray:
    """Causal (one-pass lfilter) Butterworth band-pass along `axis`."""
    from scipy.signal import lfilter

    b, a = butter_coeffs(float(low), float(high), int(order), float(fs))
    return lfilter(b, a, x, axis=axis)


def clip_scale(x: np.ndarray, clip: float = 1024.0, scale: float = 32.0) -> np.ndarray:
    return np.clip(x, -clip, clip) / scale


def band_aug_params(rng, max_channels: int, low_range, high_range, n_channels: int = 16):
    """One band augmentation draw: (1..max_channels channels with replacement, low cut uniform in
    low_range [lo, hi), high cut an integer in high_range [lo, hi))."""
    n = int(rng.integers(1, max_channels + 1))
    channels = rng.integers(0, n_channels, n)
    high = int(rng.integers(int(high_range[0]), int(high_range[1])))
    low = float(rng.uniform(low_range[0], low_range[1]))
    return channels, low, high


def band_augment(x: np.ndarray, rng, max_channels: int, low_range, high_range, order: int) -> np.ndarray:
    """Re-filter randomly chosen bipolar channels of (T, 16) `x` with a random band, on top of the
    main band-pass; a channel drawn twice is filtered once. Returns a new array."""
    channels, low, high = band_aug_params(rng, max_channels, low_range, high_range, x.shape[1])
    ch = np.unique(channels)
    x = x.copy()
    x[:, ch] = bandpass(x[:, ch], low, high, order)
    return x

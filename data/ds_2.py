"""ds_2: the raw-signal dataset of the 1D model (mdl_2), docs/solution.md section 5.

Order of operations per window, the reference's: montage -> NaN to 0 -> [train] time reversal ->
[train] hemisphere swap (even <-> odd bipolar channels) -> causal band-pass (order cfg.butter_order,
1.6-30 Hz) -> [train] band augmentation (order max(butter_order, 1)) -> clip -> /32.
Reversal runs on the unfiltered signal, so the causal filter's start-up transient stays at the
start of a reversed window (filtering first would put it at the end).
Random draws per training item, always all three and in this order: reversal, swap, band
augmentation (then the band augmentation's own draws when it applies).

Vote-count curriculum: every row gets `label_weight` from its vote total, computed once at
construction from cfg.curr_epoch / cfg.epochs (train.py rebuilds the train dataset each epoch when
cfg.reload_train_loader is set). Validation and test rows weigh 1.0.
"""
from __future__ import annotations

import numpy as np
import torch

from data.base import EEGWindowDataset
from data.signal import BIPOLAR_FLIP, LABEL_COLS, band_augment, bandpass, clip_scale, to_bipolar
from utils.config import ConfigError


def curriculum_weights(vote_sums: np.ndarray, epoch: int, epochs: int, min_votes, base_weights,
                       decay: float = 1.2, floor: float = 0.02) -> np.ndarray:
    """Per-row weight: a row takes the *last* range whose lower vote bound it reaches (so with
    bounds [0, 3, 8] a row of 8 votes is in the last range); all ranges but the last decay as
    max(base * (1 - decay * epoch / epochs), floor); the last keeps its base weight."""
    bounds = np.asarray(min_votes, dtype=np.float64)
    base = np.asarray(base_weights, dtype=np.float64)
    if len(bounds) != len(base) or len(bounds) == 0 or np.any(np.diff(bounds) <= 0):
        raise ConfigError("curriculum_min_votes must be increasing and as long as curriculum_weights")
    factor = 1.0 - decay * epoch / max(epochs, 1)
    weights = np.maximum(base * factor, floor)
    weights[-1] = base[-1]
    idx = np.searchsorted(bounds, np.asarray(vote_sums, dtype=np.float64), side="right") - 1
    return weights[np.clip(idx, 0, len(bounds) - 1)].astype(np.float32)


class CustomDataset(EEGWindowDataset):
    def __init__(self, df, cfg, mode: str = "train"):
        super().__init__(df, cfg, mode)
        order = cfg.butter_order
        if not isinstance(order, int) or isinstance(order, bool) or order < 0:
            raise ConfigError(f"butter_order must be an integer >= 0 (0: no band-pass), got {order!r}")
        if self.training and all(c in self.df.columns for c in LABEL_COLS):
            sums = self.df[LABEL_COLS].to_numpy(np.float64).sum(axis=1)
            self.label_weights = curriculum_weights(
                sums, cfg.curr_epoch, cfg.epochs, cfg.curriculum_min_votes, cfg.curriculum_weights,
                cfg.curriculum_decay, cfg.curriculum_floor)
        else:
            self.label_weights = np.ones(len(self.df), dtype=np.float32)

    def transform(self, x: np.ndarray, center: int, rng, idx: int) -> dict:
        cfg = self.cfg
        x = np.nan_to_num(to_bipolar(x.astype(np.float64)), nan=0.0)
        reverse = swap = band_aug = False
        if rng is not None:  # three draws, always, in this order
            reverse, swap, band_aug = rng.random(3) < [cfg.time_reverse_p, cfg.flip_p, cfg.band_aug_p]
        if reverse:  # on the unfiltered signal
            x = x[::-1]
            center = len(x) - center  # the label's central 10 s mirror with the window
        if swap:
            x = x[:, BIPOLAR_FLIP]
        if cfg.butter_order > 0:
            x = bandpass(x, cfg.butter_low, cfg.butter_high, cfg.butter_order)
        if band_aug:
            x = band_augment(x, rng, cfg.band_aug_max_channels, cfg.band_aug_low, cfg.band_aug_high,
                             max(cfg.butter_order, 1))
        x = clip_scale(x, cfg.clip_value, cfg.scale).astype(np.float32)
        return {"input": torch.from_numpy(np.ascontiguousarray(x)),
                "label_weight": torch.tensor(self.label_weights[idx], dtype=torch.float32),
                "_center": center}

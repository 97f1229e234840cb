"""ds_2: the raw-signal dataset of the 1D model (mdl_2), docs/solution.md §5.

Order of operations per window, the reference's: montage -> NaN to 0 -> [train] time reversal ->
[train] hemisphere swap (even <-> odd bipolar channels) -> causal band-pass (order cfg.butter_order,
1.6-30 Hz) -> [train] band augmentation (order max(butter_order, 1)) -> clip -> /32.
Reversal runs on the unfiltered signal, so the causal filter's start-up transient stays at the
start of a reversed window (filtering first would put it at the end).
Random draws per training item, always all three and in this order: reversal, swap, band
augmentation (then the band augmentation's own draws when it applies).

Vote-count curriculum: each item carries its row's vote total (`vote_sum`), and the training step
turns a batch's totals into `label_weight` for the current epoch with `prepare_batch(batch, cfg,
epoch)` (on the device, no host sync), so the dataset and loader need not be rebuilt per epoch.
Items also carry `label_weight` at cfg.curr_epoch (the same function computes it): 1.0 for validation
and test rows, and in training what prepare_batch overwrites (or what a loader rebuilt per epoch with
`reload_train_loader` uses).
"""
from __future__ import annotations

import numpy as np
import torch

from data.base import EEGWindowDataset
from data.signal import BIPOLAR_FLIP, LABEL_COLS, band_augment, bandpass, clip_scale, to_bipolar
from utils.config import ConfigError


def epoch_range_weights(epoch: int, cfg) -> list[float]:
    """Weight of each vote range at `epoch`: all but the last decay as max(base * (1 - decay *
    epoch / epochs), floor); the last keeps its base weight. Python floats (float64 arithmetic)."""
    bounds, base = list(cfg.curriculum_min_votes), [float(w) for w in cfg.curriculum_weights]
    if len(bounds) != len(base) or not bounds or any(later <= earlier for earlier, later in zip(bounds, bounds[1:])):
        raise ConfigError("curriculum_min_votes must be increasing and as long as curriculum_weights")
    factor = 1.0 - cfg.curriculum_decay * epoch / max(cfg.epochs, 1)
    return [max(w * factor, cfg.curriculum_floor) for w in base[:-1]] + base[-1:]


def batch_weights(vote_sums: torch.Tensor, epoch: int, cfg) -> torch.Tensor:
    """Per-row curriculum weight (float32, on vote_sums' device): a row takes the *last* range whose
    lower vote bound it reaches (bounds [0, 3, 8]: 8 votes are in the last range; below the first
    bound: the first range). Scalars only, so nothing is copied from the host."""
    weights = epoch_range_weights(epoch, cfg)
    sums = vote_sums.float()
    out = torch.full_like(sums, weights[0])
    for bound, weight in zip(cfg.curriculum_min_votes[1:], weights[1:]):
        out = torch.where(sums >= bound, weight, out)
    return out


def prepare_batch(batch: dict, cfg, epoch: int) -> dict:
    """Training-step hook: set batch["label_weight"] from batch["vote_sum"] for `epoch` (in place)."""
    batch["label_weight"] = batch_weights(batch["vote_sum"], epoch, cfg)
    return batch


class CustomDataset(EEGWindowDataset):
    def __init__(self, df, cfg, mode: str = "train"):
        super().__init__(df, cfg, mode)
        order = cfg.butter_order
        if not isinstance(order, int) or isinstance(order, bool) or order < 0:
            raise ConfigError(f"butter_order must be an integer >= 0 (0: no band-pass), got {order!r}")
        labelled = all(c in self.df.columns for c in LABEL_COLS)
        sums = self.df[LABEL_COLS].to_numpy(np.float64).sum(axis=1) if labelled else np.zeros(len(self.df))
        self.vote_sums = sums.astype(np.float32)
        if self.training and labelled:
            self.label_weights = batch_weights(torch.from_numpy(self.vote_sums), cfg.curr_epoch, cfg).numpy()
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
                "vote_sum": torch.tensor(self.vote_sums[idx]),  # prepare_batch turns it into label_weight
                "_center": center}

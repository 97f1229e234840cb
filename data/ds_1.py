"""Dataset of the mel-spectrogram models (docs/solution.md §5): double banana, causal band-pass 0.5-20 Hz, clip, scale.

Training: window shift (data/base.py), left/right electrode swap, band augmentation and, in ds_1
only, a jitter of `center` (the zoom target of mdl_4). ds_1a is this class with the jitter off.

Fallbacks (documented, tested): a recording shorter than 50 s is padded with NaN by data/base.py,
so with zeros here; NaN samples (a NaN stretch, an all-NaN channel, even an all-NaN window inside a
recording that has data elsewhere) become 0 before filtering. A recording that is NaN throughout
has no signal at all and raises DataError naming its file.
"""
from __future__ import annotations

import numpy as np
import torch

from data.base import EEGWindowDataset
from data.signal import ELECTRODE_FLIP, band_augment, bandpass, clip_scale, to_bipolar
from utils.config import ConfigError


class CustomDataset(EEGWindowDataset):
    center_jitter = True  # ds_1a switches it off

    def __init__(self, df, cfg, mode: str = "train"):
        super().__init__(df, cfg, mode)
        self.jitter_p = float(cfg.center_jitter_p) if self.center_jitter else 0.0
        self.jitter_max = 0
        if self.jitter_p > 0:
            if getattr(cfg, "enlarge_len", None) is None:
                raise ConfigError(f"{cfg.name}: center_jitter_p > 0 needs enlarge_len (the zoom length)")
            self.jitter_max = int(cfg.enlarge_len / 3)

    def transform(self, x: np.ndarray, center: int, rng, idx: int) -> dict:
        cfg = self.cfg
        if rng is not None and rng.random() < cfg.flip_p:
            x = x[:, ELECTRODE_FLIP]
        x = to_bipolar(x)
        x = np.nan_to_num(x, nan=0.0)
        x = bandpass(x, cfg.butter_low, cfg.butter_high, cfg.butter_order)
        if rng is not None and rng.random() < cfg.band_aug_p:
            x = band_augment(x, rng, cfg.band_aug_max_channels, cfg.band_aug_low, cfg.band_aug_high,
                             cfg.butter_order)
        x = clip_scale(x, cfg.clip_value, cfg.scale)
        if rng is not None and self.jitter_p > 0 and rng.random() < self.jitter_p:
            center = int(rng.uniform(center - self.jitter_max, center + self.jitter_max))  # the reference's draw
        return {"input": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "_center": int(center)}

"""mdl_4 (docs/solution.md §6): mdl_3 without the left/right reorder, plus a high-time-resolution zoom on the label centre.

The zoom mel of `enlarge_len` samples around `center` replaces 2b columns of the main mel around
column c = floor(w * center / 10000); both steps are batched gathers (no loop over samples).
Both mels floor at their batch-wide max minus top_db (100), a quirk kept from the reference.
"""
from __future__ import annotations

import math

import torch

from models import mdl_3
from models.layers import MelFrontEnd


def crop_starts(center: torch.Tensor, length: int, total: int) -> torch.Tensor:
    """Start of the `length`-sample crop centred on `center`, clamped to [0, total - length]."""
    return (center.long() - length // 2).clamp(0, total - length)


def splice_starts(center: torch.Tensor, width: int, half: int, total: int) -> torch.Tensor:
    """First replaced column: floor(width * center / total) - half, clamped to [0, width - 2 half - 1]."""
    c = torch.div(center.long() * width, total, rounding_mode="floor")
    return (c - half).clamp(0, width - 2 * half - 1)


class Net(mdl_3.Net):
    reorder = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mel_center = MelFrontEnd(cfg.spec_args_center, cfg.top_db)
        self.enlarge_len = int(cfg.enlarge_len)
        self.register_buffer("crop_offsets", torch.arange(self.enlarge_len), persistent=False)

    def half_cut(self, width: int) -> int:
        return math.floor(width * self.cfg.cut_from_large_mel) // 2

    def crop_center(self, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, enlarge_len) around each sample's center."""
        b, c, t = x.shape
        idx = crop_starts(center, self.enlarge_len, t)[:, None] + self.crop_offsets
        return torch.gather(x, 2, idx[:, None, :].expand(b, c, -1))

    def splice(self, main: torch.Tensor, zoom: torch.Tensor, center: torch.Tensor, total: int) -> torch.Tensor:
        """Replace main[..., s:s + 2b] by the whole zoom, s from splice_starts: (B, C, F, w - 2b + wz)."""
        b, c, f, w = main.shape
        wz = zoom.shape[-1]
        half = self.half_cut(w)
        s = splice_starts(center, w, half, total)[:, None]
        j = torch.arange(w - 2 * half + wz, device=main.device)[None, :]
        # column j of the output: main[j] before s, zoom[j - s] inside, main[j - wz + 2b] after
        idx = torch.where(j < s, j, torch.where(j < s + wz, w + j - s, j - wz + 2 * half))
        both = torch.cat([main, zoom], dim=-1)
        return torch.gather(both, 3, idx[:, None, None, :].expand(b, c, f, -1))

    def spectrogram(self, batch: dict) -> torch.Tensor:
        x = batch["input"].transpose(1, 2)  # (B, 16, T)
        center = batch["center"].to(x.device)
        main = self.mel(x)
        zoom = self.mel_center(self.crop_center(x, center))
        return self.splice(main, zoom, center, x.shape[-1])

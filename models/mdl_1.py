"""mdl_1 (docs/solution.md §6): 16 per-channel mels stacked vertically into one image -> mixnet_xl (in_chans 1) -> GeM -> 6."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.backbone import create_backbone
from models.layers import GeM, MelFrontEnd, channel_dropout, kl_loss


class Net(nn.Module):
    """Also the base of mdl_3/mdl_4, which change the image (make_image) and swap the stem."""

    fresh_stem = False

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.mel = MelFrontEnd(cfg.spec_args, cfg.top_db)
        self.backbone = create_backbone(cfg, in_chans=cfg.in_chans, fresh_stem=self.fresh_stem)
        self.pool = GeM(p=cfg.gem_p_init, eps=1e-6)
        self.head = nn.Linear(self.backbone.num_features, cfg.n_classes)
        self.channels_last = False
        if cfg.channels_last:
            self.set_channels_last(True)

    def set_channels_last(self, on: bool) -> None:
        """NHWC convolutions (faster on tensor cores and some CPUs) or the default layout; the values and
        the state dict are the same either way, and `.to(device)` keeps the format. Inference switches a
        built model (inference/fast_path.py)."""
        self.channels_last = on
        self.backbone.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def channel_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Training only: zero whole channels (dim 1) per sample."""
        if not self.training:
            return x
        return channel_dropout(x, self.cfg.channel_dropout_p, self.cfg.channel_dropout_max)

    def spectrogram(self, batch: dict) -> torch.Tensor:
        """(B, 10000, 16) signal -> (B, 16, mels, frames) dB mel of the bipolar channels."""
        return self.mel(batch["input"].transpose(1, 2))

    def make_image(self, batch: dict) -> torch.Tensor:
        """(B, 1, 16 * mels, frames): the channels' mels stacked, channel 0 on top."""
        spec = self.channel_dropout(self.spectrogram(batch))
        b, c, f, t = spec.shape
        return spec.reshape(b, 1, c * f, t)

    def forward(self, batch: dict) -> dict:
        image = self.make_image(batch)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(image)
        logits = self.head(self.pool(feats))
        out = {"logits": logits}
        if "target" in batch:
            out["loss"] = kl_loss(logits, batch["target"])
        return out

"""Layers shared by the models: GeM pooling, the float32 mel front-end, batched channel dropout, KL loss."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio


class GeM(nn.Module):
    """Generalised mean pooling with a trainable exponent p (init 3), over the given dims."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, dims=(-2, -1)):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=self.dims).pow(1.0 / self.p)


class MelFrontEnd(nn.Module):
    """Per-channel mel spectrogram in dB, always computed in float32 (also under autocast).

    Input (B, C, T) -> (B, C, n_mels, frames). With top_db, torchaudio's AmplitudeToDB floors the
    (B*C, mels, frames) tensor at its *batch-wide* max minus top_db: kept on purpose (SPEC 6).
    """

    def __init__(self, spec_args: dict, top_db: float | None = None):
        super().__init__()
        args = dict(spec_args)
        args.setdefault("power", 2.0)
        args.setdefault("mel_scale", "htk")
        args.setdefault("center", True)
        args.setdefault("pad_mode", "reflect")
        self.mel = torchaudio.transforms.MelSpectrogram(**args)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=top_db)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = self.mel(x.float().reshape(b * c, t))  # (B*C, mels, frames)
            spec = self.to_db(spec)
        return spec.reshape(b, c, spec.shape[-2], spec.shape[-1])


def channel_dropout(x: torch.Tensor, p: float, max_channels: int, generator=None) -> torch.Tensor:
    """Per sample with probability p, zero 1..max_channels channels (dim 1) drawn with replacement.

    Batched: no Python loop over samples. Returns a new tensor; x is not modified.
    """
    if p <= 0 or max_channels <= 0:
        return x
    b, c = x.shape[0], x.shape[1]
    dev = x.device
    apply = torch.rand(b, device=dev, generator=generator) < p
    n = torch.randint(1, max_channels + 1, (b,), device=dev, generator=generator)
    picks = torch.randint(0, c, (b, max_channels), device=dev, generator=generator)
    used = (torch.arange(max_channels, device=dev)[None, :] < n[:, None]) & apply[:, None]
    # several picks of one channel add up; any pick zeroes it
    drop = torch.zeros(b, c, device=dev).scatter_add_(1, picks, used.float()) > 0
    keep = (~drop).to(x.dtype).reshape(b, c, *([1] * (x.dim() - 2)))
    return x * keep


def kl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KLDivLoss(batchmean) between log_softmax(logits) and the vote shares, in float32."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target.float(), reduction="batchmean")

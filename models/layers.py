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


# MelSpectrogram arguments MelFrontEnd accepts, with torchaudio's defaults (None: derived as torchaudio does)
MEL_DEFAULTS = dict(sample_rate=16000, n_fft=400, win_length=None, hop_length=None, f_min=0.0, f_max=None,
                    n_mels=128, power=2.0, center=True, pad_mode="reflect", norm=None, mel_scale="htk")
AMIN = 1e-10  # torchaudio AmplitudeToDB's clamp; its reference value 1.0 makes the offset 0 dB


class MelFrontEnd(nn.Module):
    """Per-channel mel spectrogram in dB, always computed in float32 (also under autocast).

    Input (B, C, T) -> (B, C, n_mels, frames). Equal to torchaudio's MelSpectrogram (hann window,
    power 2) followed by AmplitudeToDB(stype="power") on the (B*C, T) signals, but written with
    torch.stft and registered buffers so that torch.compile traces it without a graph break. With
    top_db the floor is the max over the whole (B*C, mels, frames) tensor minus top_db: torchaudio
    treats a 3-D input as one item, a batch-wide quirk of the reference kept on purpose.
    State dicts keep torchaudio's keys (mel.spectrogram.window, mel.mel_scale.fb): old and new
    checkpoints load either way.
    """

    def __init__(self, spec_args: dict, top_db: float | None = None):
        super().__init__()
        unknown = set(spec_args) - set(MEL_DEFAULTS)
        if unknown:
            raise ValueError(f"unsupported mel argument(s) {sorted(unknown)}; MelFrontEnd takes {sorted(MEL_DEFAULTS)}")
        a = {**MEL_DEFAULTS, **spec_args}
        if a["power"] != 2.0:
            raise ValueError(f"MelFrontEnd computes power spectrograms (power 2), got power={a['power']}")
        self.n_fft = int(a["n_fft"])
        self.win_length = int(a["win_length"] or self.n_fft)
        self.hop_length = int(a["hop_length"] or self.win_length // 2)
        self.center, self.pad_mode, self.top_db = bool(a["center"]), a["pad_mode"], top_db
        f_max = float(a["sample_rate"] // 2) if a["f_max"] is None else a["f_max"]
        fb = torchaudio.functional.melscale_fbanks(self.n_fft // 2 + 1, a["f_min"], f_max, a["n_mels"],
                                                   a["sample_rate"], a["norm"], a["mel_scale"])
        self.mel = nn.Module()  # buffer holders named as in torchaudio.transforms.MelSpectrogram
        self.mel.spectrogram, self.mel.mel_scale = nn.Module(), nn.Module()
        self.mel.spectrogram.register_buffer("window", torch.hann_window(self.win_length))
        self.mel.mel_scale.register_buffer("fb", fb)

    def power_mel(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T) float32 -> (N, n_mels, frames) mel power, the same ops as torchaudio's."""
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.mel.spectrogram.window, center=self.center, pad_mode=self.pad_mode,
                          normalized=False, onesided=True, return_complex=True)
        power = spec.abs().pow(2.0)
        return torch.matmul(power.transpose(-1, -2), self.mel.mel_scale.fb).transpose(-1, -2)

    def to_db(self, power: torch.Tensor) -> torch.Tensor:
        """10 log10(max(power, 1e-10)); with top_db floored at the max of the whole tensor minus top_db."""
        db = 10.0 * torch.log10(torch.clamp(power, min=AMIN))
        if self.top_db is not None:
            db = torch.maximum(db, db.amax() - self.top_db)
        return db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = self.to_db(self.power_mel(x.float().reshape(b * c, t)))  # (B*C, mels, frames)
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

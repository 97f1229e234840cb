"""mdl_2: the raw-EEG model (docs/solution.md §6): 2D-conv front end over (montage row, time)
with CBAM, GeM over the rows, 3 Squeezeformer blocks with rotary attention, GeM over time, Linear(128, 6).

As in the reference, one GeM module pools both the 14 montage rows and time, so its single trainable
p gets the gradients of both uses. Dropout as the reference applies it: 15 nn.Dropout(0.2) in the FF
and conv modules; its config's input dropout (0.1) and attention dropout (0.2) are never applied
there, and here only with cfg.extra_dropouts (off in cfg_2a/2b).
Trainable parameters 668,825 (708,825 with cfg.rotary_trainable).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import GeM, channel_dropout, kl_loss
from models.squeezeformer import RotaryEmbedding, SqueezeformerBlock


def _bn_act(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.SiLU()]


class CBAM(nn.Module):
    """Channel attention (avg- and max-pooled through one shared 1x1 MLP, reduction r), then spatial
    attention (3x3 conv over the channel mean and max), both sigmoid gates; no biases."""

    def __init__(self, channels: int, reduction: int = 4, kernel: int = 3):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(channels // reduction, channels, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(gate)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def front_end(f: int = 64) -> nn.Sequential:
    """(B, 1, 16, 10000) -> (B, 2f, 14, 312); every conv without bias, Swish = SiLU."""
    return nn.Sequential(
        # time kernel 16, then /8
        nn.ZeroPad2d((7, 7, 0, 0)), nn.Conv2d(1, f, (1, 16), bias=False), nn.BatchNorm2d(f), nn.ReLU(),
        nn.AvgPool2d((1, 8)),
        # inverted bottleneck, depthwise time kernel 16 stride 2
        nn.ZeroPad2d((7, 7, 0, 0)), nn.Conv2d(f, 2 * f, 1, bias=False), nn.SiLU(),
        nn.Conv2d(2 * f, 2 * f, (1, 16), stride=(1, 2), groups=2 * f, bias=False), *_bn_act(2 * f),
        nn.Conv2d(2 * f, 2 * f, 1, bias=False), nn.BatchNorm2d(2 * f),
        CBAM(2 * f, reduction=4),
        # mixes neighbouring montage rows: depthwise (3, 1), no padding (16 rows -> 14)
        nn.Conv2d(2 * f, 4 * f, 1, groups=4, bias=False), nn.SiLU(),
        nn.Conv2d(4 * f, 4 * f, (3, 1), groups=4 * f, bias=False), *_bn_act(4 * f),
        nn.Conv2d(4 * f, 2 * f, 1, groups=4, bias=False), nn.BatchNorm2d(2 * f),
        # depthwise time kernel 8 (padding 4 + 3 keeps the length), then /2
        nn.ZeroPad2d((4, 3, 0, 0)), nn.Conv2d(2 * f, 4 * f, 1, bias=False), nn.SiLU(),
        nn.Conv2d(4 * f, 4 * f, (1, 8), groups=4 * f, bias=False), *_bn_act(4 * f),
        nn.Conv2d(4 * f, 2 * f, 1, groups=4, bias=False), nn.BatchNorm2d(2 * f),
        nn.AvgPool2d((1, 2)),
    )


def weighted_kl_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum over distinct weights w of w * KLDiv(batchmean) over the rows carrying w, vectorised:
    each row contributes w_i * KL_i / (number of rows sharing w_i)."""
    per_row = F.kl_div(F.log_softmax(logits.float(), dim=1), target.float(), reduction="none").sum(dim=1)
    weight = weight.float().reshape(-1)
    group_size = (weight[:, None] == weight[None, :]).sum(dim=1)
    return (weight * per_row / group_size).sum()


class Net(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        dim = 2 * cfg.frontend_filters
        if dim != cfg.sq_dim:
            raise ValueError(f"sq_dim ({cfg.sq_dim}) must be 2 * frontend_filters ({dim})")
        self.frontend = front_end(cfg.frontend_filters)
        # one module for both pools (rows, then time): each pools dim 2 of a (B, dim, ...) tensor
        self.pool = GeM(p=cfg.gem_p_init, dims=(2,))
        extra = bool(cfg.extra_dropouts)
        self.input_dropout = nn.Dropout(cfg.input_dropout) if extra else nn.Identity()
        self.rotary = RotaryEmbedding(dim // cfg.sq_heads, cfg.rotary_max_len, cfg.rotary_base,
                                      trainable=cfg.rotary_trainable)
        self.blocks = nn.ModuleList([
            SqueezeformerBlock(dim, cfg.sq_heads, cfg.sq_conv_kernel, cfg.sq_ff_expansion, cfg.sq_dropout,
                               attn_dropout=cfg.attn_dropout if extra else 0.0)
            for _ in range(cfg.sq_layers)])
        self.head = nn.Linear(dim, cfg.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 16) signal -> (B, T', dim) sequence after the Squeezeformer blocks."""
        x = x.transpose(1, 2)  # (B, 16, T): montage rows on dim 1 for the channel dropout
        if self.training:
            x = channel_dropout(x, self.cfg.channel_dropout_p, self.cfg.channel_dropout_max)
        x = self.frontend(x.unsqueeze(1))  # (B, dim, 14, T')
        x = self.pool(x).transpose(1, 2)  # GeM over the rows -> (B, T', dim)
        x = self.input_dropout(x)
        cos, sin = self.rotary(x.shape[1])
        for block in self.blocks:
            x = block(x, cos, sin)
        return x

    def forward(self, batch: dict) -> dict:
        logits = self.head(self.pool(self.features(batch["input"]).transpose(1, 2)))  # GeM over time
        out = {"logits": logits}
        if "target" in batch:
            if self.training and "label_weight" in batch:
                out["loss"] = weighted_kl_loss(logits, batch["target"], batch["label_weight"])
            else:
                out["loss"] = kl_loss(logits, batch["target"])
        return out

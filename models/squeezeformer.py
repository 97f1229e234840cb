"""Squeezeformer blocks with Llama-style rotary attention (mdl_2, docs/solution.md §6), no
transformers dependency.

One RotaryEmbedding is shared by all blocks (the reference's 40,000 extra trainable parameters are
exactly one 625 x 32 cos table plus one sin table).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RotaryEmbedding(nn.Module):
    """cos/sin tables (max_len, head_dim) as Llama builds them: angle(t, i) = t * base^(-2i/d), the
    half-frequencies repeated twice. `trainable=True` turns the tables into parameters (reference quirk)."""

    def __init__(self, head_dim: int = 32, max_len: int = 625, base: float = 10000.0, trainable: bool = False):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().float(), emb.sin().float()
        if trainable:
            self.cos, self.sin = nn.Parameter(cos), nn.Parameter(sin)
        else:  # deterministic: rebuilt at construction, kept out of the checkpoint
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length > self.cos.shape[0]:
            raise ValueError(f"sequence of {length} steps is longer than the rotary table ({self.cos.shape[0]})")
        return self.cos[:length], self.sin[:length]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, head_dim) rotated by position; tables cast to x's dtype (autocast-safe)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryAttention(nn.Module):
    """Multi-head self-attention, q/k/v/o without bias, rotary on q and k, fused SDPA.
    The reference applies no dropout here; `dropout` > 0 (an option, off in cfg_2a/2b) adds an
    nn.Dropout on the attention probabilities, computed without the fused kernel."""

    def __init__(self, dim: int = 128, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q = apply_rotary(self.split(self.q(x)), cos, sin)
        k = apply_rotary(self.split(self.k(x)), cos, sin)
        v = self.split(self.v(x))
        if self.drop is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            probs = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, dim=-1)
            out = self.drop(probs) @ v
        return self.o(out.transpose(1, 2).reshape(b, t, c))


class ScaleBias(nn.Module):
    """Learned per-feature x * s + b (s init 1, b init 0)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, expansion: int = 1, dropout: float = 0.2):
        super().__init__(nn.Linear(dim, dim * expansion), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(dim * expansion, dim), nn.Dropout(dropout))


class ConvModule(nn.Module):
    """Pointwise dim->2dim (bias), GLU, depthwise k (same padding, no bias), BN, Swish, pointwise (bias), Dropout."""

    def __init__(self, dim: int, kernel: int = 51, dropout: float = 0.2):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conv kernel must be odd for same padding, got {kernel}")
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.pw2 = nn.Conv1d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = F.glu(self.pw1(x.transpose(1, 2)), dim=1)
        x = F.silu(self.bn(self.dw(x)))
        return self.drop(self.pw2(x)).transpose(1, 2)


class SqueezeformerBlock(nn.Module):
    """Attn, FF, Conv, FF; each: residual on a scale/bias-shifted input, then a post-LayerNorm.
    `dropout` acts in the FF and conv modules (5 nn.Dropout per block); `attn_dropout` (default 0,
    as in the reference) on the attention probabilities."""

    def __init__(self, dim: int = 128, heads: int = 4, kernel: int = 51, expansion: int = 1, dropout: float = 0.2,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.sb = nn.ModuleList([ScaleBias(dim) for _ in range(4)])
        self.attn = RotaryAttention(dim, heads, attn_dropout)
        self.ff1 = FeedForward(dim, expansion, dropout)
        self.conv = ConvModule(dim, kernel, dropout)
        self.ff2 = FeedForward(dim, expansion, dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(4)])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = self.norms[0](x + self.attn(self.sb[0](x), cos, sin))
        x = self.norms[1](x + self.ff1(self.sb[1](x)))
        x = self.norms[2](x + self.conv(self.sb[2](x)))
        return self.norms[3](x + self.ff2(self.sb[3](x)))


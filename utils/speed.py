"""Opt-in speed switches (config fields, off by default = the reference's behaviour).

- `channels_last` (2D models): handled by the model itself (models/mdl_1.py converts the backbone at
  construction and the image in forward), so build_model(cfg) already returns the converted model.
- `compile`: `maybe_compile(model, cfg)` compiles the whole model's forward in place. Every model
  family traces as one graph (the mel front-end has no graph break), and nn.Module.compile keeps the
  state dict keys (no `_orig_mod.` prefix), so checkpoints are the same with or without it.
  Compiled code draws its own random numbers (dropout, channel dropout): a compiled run is not
  bit-identical to an eager one with the same seed.
"""
from __future__ import annotations

import torch.nn as nn


def maybe_compile(model: nn.Module, cfg) -> nn.Module:
    """torch.compile `model` in place when cfg.compile; returns the same object. Call it after
    `.to(device)` and before wrapping in DistributedDataParallel."""
    if cfg.compile:
        model.compile()
    return model

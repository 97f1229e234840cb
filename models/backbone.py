"""timm backbone for the 2D models: pretrained weights per config (download or local file), fresh stem.

Kept in one place so mdl_1/3/4 share the offline story: a failed download names the fix
(`--pretrained False` or `--pretrained_weights /path/file.pth`) instead of a network traceback.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch.nn as nn

from utils.config import ConfigError


class PretrainedWeightsError(ConfigError):
    """Pretrained weights were asked for but could not be had (no network, bad file)."""


def _offline_hint(cfg) -> str:
    return (f"run offline with `--pretrained False` (random init) or "
            f"`--pretrained_weights /path/{cfg.backbone}.pth` (a timm state dict)")


def replace_stem(model: nn.Module, in_chans: int) -> nn.Module:
    """Swap the first conv (timm's pretrained_cfg['first_conv']) for a fresh Conv2d(in_chans, out, 3, s2, p1)."""
    path = model.pretrained_cfg["first_conv"]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Conv2d(in_chans, old.out_channels, kernel_size=3, stride=2, padding=1, bias=False))
    return model


def create_backbone(cfg, in_chans: int, fresh_stem: bool = False) -> nn.Module:
    """Feature extractor (B, in_chans, H, W) -> (B, num_features, h, w); no pooling, no classifier."""
    kwargs = dict(in_chans=in_chans, num_classes=0, global_pool="",
                  drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    if not timm.is_model(cfg.backbone):
        raise ConfigError(f"backbone '{cfg.backbone}' is not a timm model name")
    weights = getattr(cfg, "pretrained_weights", None)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise PretrainedWeightsError(f"{path}: pretrained_weights file not found")
        try:
            model = timm.create_model(cfg.backbone, pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except Exception as err:  # noqa: BLE001 - a wrong or corrupt file becomes one clear line
            raise PretrainedWeightsError(f"{path}: cannot load as {cfg.backbone} weights: "
                                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    elif cfg.pretrained:
        try:
            model = timm.create_model(cfg.backbone, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - network/hub failures of any kind
            msg = str(err).splitlines()[0] if str(err) else ""
            raise PretrainedWeightsError(f"downloading pretrained {cfg.backbone} weights failed "
                                         f"({type(err).__name__}: {msg}); {_offline_hint(cfg)}") from None
    else:
        model = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    if fresh_stem:
        replace_stem(model, in_chans)
    return model

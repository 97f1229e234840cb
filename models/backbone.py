"""timm backbone for the 2D models: pretrained weights per config (download or local file), fresh stem.

Kept in one place so mdl_1/3/4 share the offline story: a failed download names the fix
(`--pretrained False` or `--pretrained_weights /path/file.pth`) instead of a network traceback.
"""
from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch.nn as nn

from utils.config import ConfigError


class PretrainedWeightsError(ConfigError):
    """Pretrained weights were asked for but could not be had (no network, bad file)."""


def _offline_hint(cfg) -> str:
    return (f"run offline with `--pretrained False` (random init) or "
            f"`--pretrained_weights /path/{cfg.backbone}.pth` (a timm state dict)")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt to the weights hub (HF_ENDPOINT aware), instead of minutes of retries."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_hub(offline: bool):
    """Silence the hub's retry warnings; offline: use the local cache only (fails at once if not there)."""
    from huggingface_hub import constants

    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "timm", "urllib3")]
    levels = [lg.level for lg in loggers]
    old = constants.HF_HUB_OFFLINE
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        constants.HF_HUB_OFFLINE = old or offline
        yield
    finally:
        constants.HF_HUB_OFFLINE = old
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def download_pretrained(cfg, kwargs) -> nn.Module:
    """timm weights from the hub or its local cache; any failure is one line naming the offline options."""
    online = hub_reachable()
    try:
        with quiet_hub(offline=not online):
            return timm.create_model(cfg.backbone, pretrained=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - network/hub failures of any kind
        why = "the weights hub cannot be reached and they are not in the local cache" if not online else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise PretrainedWeightsError(f"downloading pretrained {cfg.backbone} weights failed ({why}); "
                                     f"{_offline_hint(cfg)}") from None


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
        model = download_pretrained(cfg, kwargs)
    else:
        model = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    if fresh_stem:
        replace_stem(model, in_chans)
    return model

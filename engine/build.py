"""Turn a config into its dataset and model: the one place that maps cfg.dataset / cfg.model to modules.

Opt-in speed switches (config fields, off by default = the reference's behaviour):
- `channels_last` (2D models): handled by the model itself (models/mdl_1.py converts the backbone at
  construction and the image in forward), so build_model(cfg) already returns the converted model.
- `compile`: `maybe_compile(model, cfg)` compiles the whole model's forward in place. Every model
  family traces as one graph (the mel front-end has no graph break), and nn.Module.compile keeps the
  state dict keys (no `_orig_mod.` prefix), so checkpoints are the same with or without it.
  Compiled code draws its own random numbers (dropout, channel dropout): a compiled run is not
  bit-identical to an eager one with the same seed.
"""
from __future__ import annotations

import importlib
import pkgutil

import data
import models
from engine.precision import keep_grouped_convs_fp32
from utils.config import ConfigError


def _module(package, name: str, kind: str):
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    if name not in names:
        raise ConfigError(f"{kind} module '{name}' does not exist in {package.__name__}/ "
                          f"(have: {', '.join(n for n in names if n.startswith(('ds_', 'mdl_')))})")
    return importlib.import_module(f"{package.__name__}.{name}")


def dataset_module(cfg):
    return _module(data, cfg.dataset, "dataset")


def model_module(cfg):
    return _module(models, cfg.model, "model")


def build_dataset(df, cfg, mode: str = "train"):
    return dataset_module(cfg).CustomDataset(df, cfg, mode=mode)


def build_model(cfg):
    """The config's Net; its grouped convolutions run in float32 under CPU float16 autocast (engine/precision.py)."""
    model = model_module(cfg).Net(cfg)
    keep_grouped_convs_fp32(model)
    return model


def _no_hook(batch: dict, cfg, epoch: int) -> dict:
    return batch


def batch_hook(cfg):
    """The dataset module's training-step hook `prepare_batch(batch, cfg, epoch) -> batch` (ds_2: the
    curriculum weights for the epoch), or a no-op for datasets without one."""
    return getattr(dataset_module(cfg), "prepare_batch", _no_hook)


def maybe_compile(model, cfg):
    """torch.compile `model` in place when cfg.compile; returns the same object. Call it after
    `.to(device)` and before wrapping in DistributedDataParallel."""
    if cfg.compile:
        model.compile()
    return model

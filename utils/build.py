"""Turn a config into its dataset and model: the one place that maps cfg.dataset / cfg.model to modules."""
from __future__ import annotations

import importlib
import pkgutil

import data
import models
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
    """The config's Net; its grouped convolutions run in float32 under CPU float16 autocast (utils/precision.py)."""
    from utils.precision import keep_grouped_convs_fp32

    model = model_module(cfg).Net(cfg)
    keep_grouped_convs_fp32(model)
    return model


def _no_hook(batch: dict, cfg, epoch: int) -> dict:
    return batch


def batch_hook(cfg):
    """The dataset module's training-step hook `prepare_batch(batch, cfg, epoch) -> batch` (ds_2: the
    curriculum weights for the epoch), or a no-op for datasets without one."""
    return getattr(dataset_module(cfg), "prepare_batch", _no_hook)

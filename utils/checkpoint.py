"""Run folders and checkpoints: atomic writes, weights_only loads, finished/interrupted detection.

A run folder <output_dir>/<name>/fold<fold>/seed<seed>/ is *finished* when checkpoint.pth exists
(written last) and *interrupted* when only the per-epoch resume state last_state.pth exists.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from utils.config import cfg_from_dict
from utils.io import DataError, atomic_write_text

FINAL = "checkpoint.pth"
RESUME = "last_state.pth"


def run_dir(output_dir, name: str, fold: int, seed: int) -> Path:
    return Path(output_dir) / name / f"fold{fold}" / f"seed{seed}"


def is_finished(path) -> bool:
    return (Path(path) / FINAL).is_file()


def is_interrupted(path) -> bool:
    return (Path(path) / RESUME).is_file() and not is_finished(path)


def interrupted_runs(output_dir, name: str, fold: int) -> list[Path]:
    base = Path(output_dir) / name / f"fold{fold}"
    return sorted(p for p in base.glob("seed*") if is_interrupted(p)) if base.is_dir() else []


def finished_runs(output_dir, config: str) -> list[Path]:
    """Run folders of a config holding a checkpoint (all folds, fold -1 included), in a stable order."""
    return sorted(p.parent for p in Path(output_dir).glob(f"{config}/fold*/seed*/{FINAL}"))


def load_run_config(folder, data_dir, cache_dir=None) -> SimpleNamespace:
    """A run folder's resolved config (config.json over its module's defaults), set up for offline inference."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise DataError(f"{path}: run config not found (each run folder needs config.json next to checkpoint.pth)")
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable run config: {err}") from None
    cfg = cfg_from_dict(saved)
    cfg.pretrained, cfg.pretrained_weights = False, None  # the checkpoint holds every weight
    cfg.data_dir, cfg.cache_dir = str(data_dir), cache_dir
    return cfg


def save(obj: dict, path) -> None:
    """torch.save through a temporary file and rename: a crash never leaves half a checkpoint."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_text(path, buf.getvalue())


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt/foreign file -> one clear line
        raise DataError(f"{path}: cannot load checkpoint: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def load_model_weights(model: torch.nn.Module, path) -> dict:
    """Load checkpoint.pth's "model" into `model`; returns the whole checkpoint dict."""
    ckpt = load(path)
    if "model" not in ckpt:
        raise DataError(f"{path}: checkpoint has no 'model' entry")
    model.load_state_dict(ckpt["model"])
    return ckpt

"""The trained ensemble: every finished run of every blended config, rebuilt from its config.json, run in
validation mode (no augmentation) on any rows, and blended (the blend's weights and class bias, then softmax).
`ensemble_probs` is the one place the blend is applied; the Kaggle submission and recordings both use it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from configs.default_config import RUN_ONLY_KEYS
from data.signal import LABEL_COLS
from engine.build import build_dataset, build_model
from engine.step import to_device
from inference import blend
from utils import checkpoint as ckpt
from utils.io import DataError
from utils.metric import softmax


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def load_model(run_dir: Path, cfg, device) -> torch.nn.Module:
    path = Path(run_dir) / ckpt.CHECKPOINT_FILE
    model = build_model(cfg)
    try:
        ckpt.load_model_weights(model, path)
    except RuntimeError as err:
        raise DataError(f"{path}: checkpoint does not fit the model of its config.json: "
                        f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval()


def _signature(cfg) -> str:
    # "_run" and other private keys are train.py's notes about the run (rows, device), not settings
    return json.dumps({k: v for k, v in sorted(vars(cfg).items()) if k not in RUN_ONLY_KEYS and not k.startswith("_")},
                      default=str)


def config_logits(runs, df, device, batch_size=16, num_workers=0, progress=None, store=None) -> np.ndarray:
    """Mean logits (N, 6) of one config's runs [(run_dir, cfg), ...] on the rows of df, in order
    (validation mode: no augmentation). `store` replaces the Kaggle folder's recordings (--recording)."""
    groups: dict[str, list] = {}
    for run, cfg in runs:
        groups.setdefault(_signature(cfg), []).append((run, cfg))
    total = np.zeros((len(df), len(LABEL_COLS)))
    for members in groups.values():
        models = [load_model(run, cfg, device) for run, cfg in members]
        ds = build_dataset(df, members[0][1], mode="test")
        if store is not None:
            ds.store = store
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        row = 0
        with torch.inference_mode():
            for batch in loader:
                batch = to_device({k: v for k, v in batch.items() if k != "target"}, device)
                n = len(batch["input"])
                for model in models:
                    total[row:row + n] += model(batch)["logits"].float().cpu().numpy()
                row += n
                if progress is not None:
                    progress.update(n * len(models))
        del models
    return total / len(runs)


def load_ensemble(output_dir, blend_path, data_dir, cache_dir=None) -> tuple[dict, dict]:
    """(blend weights, {config: [(run_dir, cfg), ...]}): every blended config's finished runs, each
    run's config read before any model runs, so a broken folder fails fast."""
    blend_path = Path(blend_path) if blend_path else Path(output_dir) / blend.BLEND_FILE
    weights = blend.load_blend(blend_path)
    dirs = {cfg: ckpt.finished_runs(output_dir, cfg) for cfg in weights["weights"]}
    missing = [cfg for cfg, r in dirs.items() if not r]
    if missing:
        raise DataError(f"{output_dir}: no checkpoints for {', '.join(missing)} (expected "
                        f"<output_dir>/<cfg>/fold*/seed*/checkpoint.pth; the blend file {blend_path} uses them)")
    runs = {cfg: [(d, ckpt.load_run_config(d, data_dir, cache_dir)) for d in ds] for cfg, ds in dirs.items()}
    return weights, runs


def ensemble_probs(weights, runs, df, device, batch_size=16, num_workers=0, store=None, desc="predict",
                   unit="rec*run") -> tuple[np.ndarray, dict]:
    """The one place for the blend: (probabilities (N, 6), each config's mean logits) on df's rows."""
    n_runs = sum(len(r) for r in runs.values())
    logits = {}
    with tqdm(total=len(df) * n_runs, desc=desc, unit=unit, disable=None) as bar:
        for cfg, members in runs.items():
            bar.set_postfix_str(cfg)
            logits[cfg] = config_logits(members, df, device, batch_size, num_workers, bar, store)
    names = list(logits)
    blended = blend.blend_logits(np.stack([logits[c] for c in names], axis=2),
                                 [weights["weights"][c] for c in names], weights["bias"])
    return softmax(blended), logits

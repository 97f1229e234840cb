"""A model's logits on validation rows, split over the DDP ranks and gathered in row order (train.py's
validation; engine/loaders.val_rows says which rows each rank takes)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from data.signal import LOGIT_COLS
from engine.loaders import make_val_loader
from engine.step import to_device
from utils import distributed as dist_utils


@torch.no_grad()
def predict_logits(model, ds, cfg, info, autocast, loader=None) -> tuple[np.ndarray, float | None]:
    """Logits for every row of `ds` in row order, gathered on rank 0 from the ranks' slices."""
    loader = make_val_loader(ds, cfg, info) if loader is None else loader
    model.eval()
    parts, loss_sum, n = [], torch.zeros((), device=info.device), 0
    for batch in tqdm(loader, desc="validation", disable=not info.is_main, leave=False):
        batch = to_device(batch, info.device)
        with autocast():
            out = model(batch)
        parts.append(out["logits"].float())
        if "loss" in out:
            loss_sum += out["loss"].detach().float() * len(out["logits"])
            n += len(out["logits"])
    local = torch.cat(parts).cpu().numpy() if parts else np.zeros((0, len(LOGIT_COLS)), np.float32)
    gathered = dist_utils.gather_objects((local, float(loss_sum), n), info)
    logits = np.concatenate([g[0] for g in gathered])
    total_n = sum(g[2] for g in gathered)
    return logits, (sum(g[1] for g in gathered) / total_n if total_n else None)

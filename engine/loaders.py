"""The training and validation loaders of a run, and how many worker processes they get."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from data.sampler import EpochSampler
from engine.build import build_dataset
from utils.seed import worker_init_fn


def make_train_loader(cfg, df, info, epoch) -> DataLoader:
    """The train dataset and loader; drop_last as the reference. The sampler hands each item its epoch,
    so rows draw the same augmentations whatever the worker count (see data/sampler.py)."""
    cfg.curr_epoch = epoch
    ds = build_dataset(df, cfg, mode="train")
    sampler = EpochSampler(len(ds), cfg.seed, shuffle=True, rank=info.rank, world=info.world_size)
    sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, worker_init_fn=worker_init_fn,
                      generator=torch.Generator(), pin_memory=info.device.type == "cuda", **worker_args(cfg, info))


def worker_args(cfg, info) -> dict:
    """Loader workers kept alive across epochs, each with batches prefetched (none: load in-process)."""
    n = n_workers(cfg, info)
    return {"num_workers": n, **({"persistent_workers": True, "prefetch_factor": 4} if n else {})}


def n_workers(cfg, info) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cfg.num_workers, cpus // info.world_size))


def make_val_loader(ds, cfg, info) -> DataLoader:
    """This rank's contiguous slice of the validation rows (no padding, so no row is duplicated)."""
    idx = np.array_split(np.arange(len(ds)), info.world_size)[info.rank]
    return DataLoader(Subset(ds, idx.tolist()), batch_size=cfg.batch_size_val or cfg.batch_size, shuffle=False,
                      pin_memory=info.device.type == "cuda", generator=torch.Generator(),  # not the global RNG
                      **worker_args(cfg, info))

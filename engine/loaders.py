"""The training and validation loaders of a run, and how many worker processes they get."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from data.sampler import EpochSampler
from engine.build import build_dataset
from utils.seed import worker_init_fn
from utils.stop import ignore_stop_signals


def make_train_loader(cfg, df, info, epoch) -> DataLoader:
    """The train dataset and loader; drop_last as the reference. The sampler hands each item its epoch,
    so rows draw the same augmentations whatever the worker count (see data/sampler.py)."""
    cfg.curr_epoch = epoch
    ds = build_dataset(df, cfg, mode="train")
    sampler = EpochSampler(len(ds), cfg.seed, shuffle=True, rank=info.rank, world=info.world_size)
    sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, worker_init_fn=init_worker,
                      generator=torch.Generator(), pin_memory=info.device.type == "cuda", **worker_args(cfg, info))


def init_worker(worker_id: int) -> None:
    """A loader worker: stop signals are the main process's to handle (utils/stop.py), then the seeds."""
    ignore_stop_signals()
    worker_init_fn(worker_id)


MAX_WORKERS = 8  # the reference's loader workers per process


def worker_args(cfg, info, persistent: bool = True) -> dict:
    """Loader workers (none: load in-process). The training loader keeps its workers alive across epochs with
    batches prefetched; the validation loader's workers live only while it runs, so the two never hold twice
    the workers for the whole run."""
    n = n_workers(cfg, info)
    return {"num_workers": n, **({"persistent_workers": True, "prefetch_factor": 4} if n and persistent else {})}


def cpus_available(environ=os.environ) -> int:
    """CPUs this process may use: SLURM's CPUs per task inside a SLURM job, else the affinity mask."""
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def n_workers(cfg, info, environ=os.environ) -> int:
    """Workers per process: the CPUs available divided among this node's processes (not the global world
    size: 2 nodes x 4 GPUs with 32 CPUs each give 8 per process), capped by num_workers and MAX_WORKERS."""
    per_process = cpus_available(environ) // max(info.local_world_size, 1)
    return max(0, min(cfg.num_workers, MAX_WORKERS, per_process))


def val_rows(n_rows: int, batch_size: int, info) -> np.ndarray:
    """This rank's validation rows: the rows cut into fixed batches of batch_size, and the batches split into
    contiguous groups, one per rank. Every batch holds the same rows whatever the world size, so a model
    whose output depends on its batch mates (mdl_4's batch-wide dB floor) gives the same logits with 1 or N
    processes, and the ranks' parts concatenated in rank order are the rows in order."""
    n_batches = -(-n_rows // batch_size)
    mine = np.array_split(np.arange(n_batches), info.world_size)[info.rank]
    if len(mine) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.arange(mine[0] * batch_size, min((mine[-1] + 1) * batch_size, n_rows))


def make_val_loader(ds, cfg, info) -> DataLoader:
    """This rank's whole validation batches (`val_rows`; no padding, so no row is duplicated)."""
    batch_size = cfg.batch_size_val or cfg.batch_size
    idx = val_rows(len(ds), batch_size, info)
    return DataLoader(Subset(ds, idx.tolist()), batch_size=batch_size, shuffle=False,
                      pin_memory=info.device.type == "cuda", generator=torch.Generator(),  # not the global RNG
                      worker_init_fn=init_worker, **worker_args(cfg, info, persistent=False))

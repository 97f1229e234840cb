"""Seeds that mean the same on every machine, and RNG state capture for resuming.

- Data augmentation: each training item draws from `item_rng(seed, epoch, row)`, a stream that depends
  on nothing else (not the DataLoader worker count, the machine or the rank layout).
- The epoch's row order: `epoch_order(n, seed, epoch)`, likewise.
- Model-side randomness (dropout, channel dropout) uses the process's torch RNG, seeded from
  `rank_seed(seed, rank)` so no DDP rank reuses another run's seed (runs use consecutive seeds),
  and saved/restored on resume.
Each kind of stream starts its SeedSequence entropy with its own domain word (ORDER, ITEM, RANK), so no
two kinds can coincide: without it, `[seed, epoch]` and `[seed, epoch, 0]` are one stream (SeedSequence
pads with zeros) and `[seed, rank]` another kind's `[seed, epoch]` (tests/test_seed.py checks a grid).
Seeds are below 2**32 (train.py checks), so each is one entropy word.
The states are stored as plain tensors/ints (no numpy pickles) so checkpoints load with
torch.load(weights_only=True).
"""
from __future__ import annotations

import random

import numpy as np
import torch

ORDER, ITEM, RANK = 0x4F524452, 0x4954454D, 0x52414E4B  # "ORDR", "ITEM", "RANK": a stream's first entropy word


def draw_seed() -> int:
    return int(np.random.SeedSequence().entropy % 1_000_000)


def rank_seed(seed: int, rank: int = 0) -> int:
    """The process seed of `rank` in a run seeded `seed`: independent streams, never another run's seed."""
    return int(np.random.SeedSequence([RANK, int(seed), int(rank)]).generate_state(1, np.uint32)[0])


def item_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The augmentation stream of one training row in one epoch."""
    return np.random.default_rng([ITEM, int(seed), int(epoch), int(row)])


def order_rng(seed: int, epoch: int) -> np.random.Generator:
    """The stream that shuffles the rows of one epoch."""
    return np.random.default_rng([ORDER, int(seed), int(epoch)])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled row order of one epoch."""
    return order_rng(seed, epoch).permutation(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: seed python/numpy from the worker's torch seed, so any code that still uses
    the global generators differs per worker (the datasets draw from `item_rng` instead)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def get_rng_state(generator: torch.Generator | None = None) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None, warn=None) -> None:
    """Restore get_rng_state's states; `warn(line)` says so when not every saved CUDA state could be."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        saved, now = len(state["cuda"]), torch.cuda.device_count()
        for i in range(min(saved, now)):  # a run started with more (or fewer) visible GPUs than this process has
            torch.cuda.set_rng_state(state["cuda"][i], i)
        if saved != now and warn is not None:
            warn(f"the run saved the random states of {saved} GPU(s), this process sees {now}: restored {min(saved, now)}")
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])

"""The training sampler: a row order per (seed, epoch), split over DDP ranks, yielding (epoch, row) keys.

The dataset receives the epoch with each row, so an item's augmentations come from
`utils.seed.item_rng(seed, epoch, row)` whatever the worker count, and persistent workers (which keep
their own copy of the dataset) still see the current epoch. The order does not depend on any RNG
state, so a resumed run continues with the same order as an uninterrupted one; a run stopped inside an epoch
resumes with `set_epoch(epoch, skip)`, which leaves out the items its ranks already trained on.
"""
from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Sampler

from utils.seed import epoch_order


class EpochSampler(Sampler):
    """Like DistributedSampler (pad by wrapping to a multiple of `world`, then rank::world), seeded per epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.per_rank = math.ceil(n / world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch's order from this rank's item `skip` on (0 <= skip <= per_rank)."""
        if not 0 <= skip <= self.per_rank:
            raise ValueError(f"skip {skip} outside 0..{self.per_rank}")
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)
        pad = self.per_rank * self.world - self.n
        if pad:
            order = np.concatenate([order, np.resize(order, pad)])
        return iter([(self.epoch, int(i)) for i in order[self.rank::self.world][self.skip:]])

"""ds_2's vote-count curriculum computed in the training step (prepare_batch) equals the weights the
dataset used to compute at construction, epoch by epoch."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from data.ds_2 import CustomDataset, batch_weights, epoch_range_weights, prepare_batch
from data.signal import LABEL_COLS
from utils.config import ConfigError, load_config


def reference_weights(vote_sums, epoch, epochs, min_votes, base_weights, decay=1.2, floor=0.02):
    """data/ds_2.py's numpy `curriculum_weights` before the curriculum moved to the training step (frozen copy)."""
    bounds = np.asarray(min_votes, dtype=np.float64)
    base = np.asarray(base_weights, dtype=np.float64)
    factor = 1.0 - decay * epoch / max(epochs, 1)
    weights = np.maximum(base * factor, floor)
    weights[-1] = base[-1]
    idx = np.searchsorted(bounds, np.asarray(vote_sums, dtype=np.float64), side="right") - 1
    return weights[np.clip(idx, 0, len(bounds) - 1)].astype(np.float32)


def reference_for(cfg, sums, epoch):
    return reference_weights(sums, epoch, cfg.epochs, cfg.curriculum_min_votes, cfg.curriculum_weights,
                             cfg.curriculum_decay, cfg.curriculum_floor)


@pytest.mark.parametrize("name", ["cfg_2a", "cfg_2b"])
def test_batch_weights_equal_the_numpy_curriculum_at_every_epoch(name):
    cfg = load_config(name)
    sums = np.arange(0, 41, dtype=np.float32)  # every vote total up to 40, bounds 3 and 8 included
    seen = set()
    for epoch in range(cfg.epochs):
        got = batch_weights(torch.from_numpy(sums), epoch, cfg)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), reference_for(cfg, sums, epoch))
        seen.add(tuple(got[[0, 3, 8]].tolist()))
    assert len(seen) > 20  # the weights move with the epoch (and reach the floor)
    assert epoch_range_weights(cfg.epochs - 1, cfg)[:2] == [0.02, 0.02]


def test_other_bounds_and_out_of_range_totals():
    cfg = load_config("cfg_2a")
    cfg.curriculum_min_votes, cfg.curriculum_weights, cfg.epochs = [2, 5, 9, 20], [0.1, 0.4, 0.7, 0.9], 7
    sums = np.array([0, 1, 2, 4.5, 5, 8, 9, 19, 20, 100], dtype=np.float32)
    for epoch in range(7):
        np.testing.assert_array_equal(batch_weights(torch.from_numpy(sums), epoch, cfg).numpy(),
                                      reference_for(cfg, sums, epoch))
    cfg.curriculum_min_votes = [0, 8, 3, 9]
    with pytest.raises(ConfigError, match="increasing"):
        batch_weights(torch.zeros(2), 0, cfg)


def test_prepare_batch_on_loader_batches_equals_a_dataset_rebuilt_per_epoch(tiny_data):
    cfg = load_config("cfg_2a")
    cfg.data_dir, cfg.cache_dir = str(tiny_data), str(tiny_data / "cache")
    df = pd.read_csv(tiny_data / "train_folded_6k6c_1up.csv")
    df[LABEL_COLS] = 0
    df["other_vote"] = [0, 2, 3, 5, 7, 8, 9, 13]  # all three ranges and both boundaries
    loader = DataLoader(CustomDataset(df, cfg, mode="train"), batch_size=8, shuffle=False)
    for epoch in (0, 1, 14, 29):
        cfg.curr_epoch = epoch
        rebuilt = CustomDataset(df, cfg, mode="train").label_weights
        batch = prepare_batch(next(iter(loader)), cfg, epoch)
        np.testing.assert_array_equal(batch["label_weight"].numpy(), rebuilt)
        np.testing.assert_array_equal(rebuilt, reference_for(cfg, df["other_vote"].to_numpy(), epoch))
    assert batch["vote_sum"].dtype == torch.float32 and batch["vote_sum"].tolist() == df["other_vote"].tolist()
    val = CustomDataset(df, cfg, mode="val")
    assert float(val[5]["vote_sum"]) == 8.0 and float(val[5]["label_weight"]) == 1.0


def test_batch_hook_is_ds_2_prepare_batch_and_a_no_op_elsewhere():
    from engine.build import batch_hook

    assert batch_hook(load_config("cfg_2a")) is prepare_batch
    batch = {"input": torch.zeros(2, 3)}
    assert batch_hook(load_config("cfg_5a"))(batch, load_config("cfg_5a"), 3) is batch and list(batch) == ["input"]

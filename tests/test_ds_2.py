"""ds_2: the vote-count curriculum, its preprocessing against a plain computation, and the augmentations."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.signal import butter, lfilter

from data.ds_2 import CustomDataset
from data.signal import EEG_COLUMNS, LABEL_COLS, MONTAGE
from utils.config import ConfigError, cfg_to_dict, load_config
from utils.io import DataError


def make_cfg(data_dir, **kw):
    cfg = load_config("cfg_2a")
    cfg.data_dir = str(data_dir)
    cfg.cache_dir = str(data_dir / "cache")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def rows(data_dir):
    return pd.read_csv(data_dir / "train_folded_6k6c_1up.csv")


def plain_input(data_dir, eeg_id, start, order=1, low=1.6, high=30.0):
    """Written independently of ds_2: electrode names -> bipolar, NaN -> 0, scipy filter, clip, /32."""
    raw = pd.read_parquet(data_dir / "train_eegs" / f"{eeg_id}.parquet").to_numpy(np.float64)[start:start + 10_000]
    bip = np.stack([raw[:, EEG_COLUMNS.index(a)] - raw[:, EEG_COLUMNS.index(b)] for a, b in MONTAGE], axis=1)
    bip = np.where(np.isnan(bip), 0.0, bip)
    b, a = butter(order, [low / 100, high / 100], btype="band")
    return np.clip(lfilter(b, a, bip, axis=0), -1024, 1024) / 32


@pytest.mark.parametrize("epoch, low_w, mid_w", [(0, 0.3, 0.5), (15, 0.3 * 0.4, 0.5 * 0.4), (29, 0.02, 0.02)])
def test_curriculum_weights_by_hand(tiny_data, epoch, low_w, mid_w):
    # SPEC: factor (1 - 1.2 e / E), E = 30: e 15 -> 0.4; e 29 -> -0.16, so both floored at 0.02
    df = pd.concat([rows(tiny_data)] * 2, ignore_index=True).iloc[:9].copy()
    totals = [0, 1, 2, 3, 5, 7, 8, 9, 13]
    votes = np.zeros((9, 6), dtype=int)
    votes[:, 5] = totals
    df[LABEL_COLS] = votes
    ds = CustomDataset(df, make_cfg(tiny_data, curr_epoch=epoch, epochs=30), mode="train")
    expected = [low_w] * 3 + [mid_w] * 3 + [1.0] * 3
    np.testing.assert_allclose(ds.label_weights, expected, rtol=1e-6)
    assert ds[6]["label_weight"].dtype == torch.float32
    assert float(ds[6]["label_weight"]) == 1.0  # 8 votes: in [3, 8] and [8, inf) -> the later range
    assert float(ds[0]["label_weight"]) == pytest.approx(low_w)
    for mode in ("val", "test"):
        assert np.all(CustomDataset(df, make_cfg(tiny_data, curr_epoch=epoch), mode=mode).label_weights == 1.0)


def test_eight_votes_take_the_last_range_at_every_epoch(tiny_data):
    df = rows(tiny_data).iloc[:2].copy()
    df[LABEL_COLS] = [[2, 2, 2, 1, 1, 0], [2, 2, 2, 1, 0, 0]]  # 8 and 7 votes
    for epoch in (0, 10, 29):
        w = CustomDataset(df, make_cfg(tiny_data, curr_epoch=epoch, epochs=30)).label_weights
        assert w[0] == 1.0 and w[1] == pytest.approx(max(0.5 * (1 - 1.2 * epoch / 30), 0.02))


def test_validation_item_matches_plain_computation(tiny_data):
    from conftest import write_recording
    write_recording(tiny_data / "train_eegs" / "1003.parquet", 200 * 135, seed=3, nan_rows=slice(7_000, 9_000))
    df = rows(tiny_data)
    for order in (1, 2):
        ds = CustomDataset(df, make_cfg(tiny_data, butter_order=order), mode="val")
        for i in (0, 7):
            item = ds[i]
            start = int(df.eeg_label_offset_seconds[i] * 200)
            np.testing.assert_allclose(item["input"].numpy(), plain_input(tiny_data, df.eeg_id[i], start, order),
                                       rtol=1e-5, atol=1e-5)
            assert item["input"].shape == (10_000, 16) and item["input"].dtype == torch.float32
            assert int(item["center"]) == 5000 and float(item["label_weight"]) == 1.0
            np.testing.assert_allclose(item["target"].numpy(), df.loc[i, LABEL_COLS].to_numpy(float)
                                       / df.loc[i, LABEL_COLS].sum(), rtol=1e-6)


def test_time_reversal_reverses_window_and_mirrors_center(tiny_data):
    df = rows(tiny_data)
    ds = CustomDataset(df, make_cfg(tiny_data, time_reverse_p=1.0, flip_p=0.0, band_aug_p=0.0), mode="train")
    torch.manual_seed(0)
    seen = set()
    for i in (2, 3, 5):
        item = ds[i]
        center = 10_000 - int(item["center"])  # the centre before reversal
        start = int(df.eeg_label_offset_seconds[i] * 200) + 5000 - center
        np.testing.assert_allclose(item["input"].numpy(), plain_input(tiny_data, df.eeg_id[i], start)[::-1],
                                   rtol=1e-5, atol=1e-5)
        seen.add(int(item["center"]))
    assert len(seen) > 1  # the shift was active, so the centre mirror was exercised


def test_hemisphere_swap_exchanges_left_and_right_channels(tiny_data):
    df = rows(tiny_data)
    ds = CustomDataset(df, make_cfg(tiny_data, time_reverse_p=0.0, flip_p=1.0, band_aug_p=0.0, shift_max=0))
    out = ds[1]["input"].numpy()
    plain = plain_input(tiny_data, df.eeg_id[1], int(df.eeg_label_offset_seconds[1] * 200))
    names = [f"{a}-{b}" for a, b in MONTAGE]
    assert names[0] == "Fp1-F7" and names[1] == "Fp2-F8"
    for k in range(16):
        np.testing.assert_allclose(out[:, k], plain[:, k ^ 1], rtol=1e-5, atol=1e-5)


def test_band_augmentation_refilters_one_to_eight_channels(tiny_data):
    df = rows(tiny_data)
    cfg = make_cfg(tiny_data, time_reverse_p=0.0, flip_p=0.0, band_aug_p=1.0, shift_max=0)
    plain = CustomDataset(df, cfg, mode="val")[0]["input"].numpy()
    ds = CustomDataset(df, cfg, mode="train")
    torch.manual_seed(1)
    counts = []
    for _ in range(12):
        out = ds[0]["input"].numpy()
        changed = ~np.all(np.isclose(out, plain, atol=1e-6), axis=0)
        np.testing.assert_array_equal(out[:, ~changed], plain[:, ~changed])
        counts.append(int(changed.sum()))
    assert min(counts) >= 1 and max(counts) <= 8 and len(set(counts)) > 1


def test_configs_and_bad_order(tiny_data):
    a, b = cfg_to_dict(load_config("cfg_2a")), cfg_to_dict(load_config("cfg_2b"))
    assert {k for k in a if a[k] != b[k]} == {"name", "butter_order"} and (a["butter_order"], b["butter_order"]) == (1, 2)
    spec7 = dict(model="mdl_2", dataset="ds_2", train_df="train_folded_6k6c_1up.csv", epochs=30, lr=1e-3,
                 batch_size=64, grad_accumulation=3, clip_grad=4.0, mixed_precision=True, eval_epochs=2,
                 reload_train_loader=True, optimizer="Adam", weight_decay=0.0, schedule="cosine", pool="gem")
    assert {k: a[k] for k in spec7} == spec7
    with pytest.raises(ConfigError, match="butter_order"):
        CustomDataset(rows(tiny_data), make_cfg(tiny_data, butter_order=1.5))


def test_nan_windows_become_zeros_but_nan_recordings_raise(tiny_data):
    from conftest import write_recording
    write_recording(tiny_data / "train_eegs" / "1000.parquet", 12_000, seed=0, nan_rows=slice(0, 11_000))
    write_recording(tiny_data / "train_eegs" / "1001.parquet", 17_000, seed=1, nan_rows=slice(None))
    df = rows(tiny_data)
    ds = CustomDataset(df, make_cfg(tiny_data), mode="val")
    assert np.all(ds[0]["input"].numpy() == 0)  # window all NaN, the recording has data later
    with pytest.raises(DataError, match=r"1001\.parquet: recording is NaN throughout"):
        ds[2]

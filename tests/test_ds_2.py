"""ds_2: the vote-count curriculum, its preprocessing against a plain computation, and the augmentations."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.signal import butter, lfilter

from data.ds_2 import CustomDataset
from data.signal import EEG_COLUMNS, LABEL_COLS, MONTAGE, band_aug_params
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


def raw_bipolar(data_dir, eeg_id, start):
    """Written independently of ds_2: the window's electrodes by name -> bipolar, NaN -> 0."""
    raw = pd.read_parquet(data_dir / "train_eegs" / f"{eeg_id}.parquet").to_numpy(np.float64)[start:start + 10_000]
    bip = np.stack([raw[:, EEG_COLUMNS.index(a)] - raw[:, EEG_COLUMNS.index(b)] for a, b in MONTAGE], axis=1)
    return np.where(np.isnan(bip), 0.0, bip)


def scipy_filter(x, order=1, low=1.6, high=30.0):
    b, a = butter(order, [low / 100, high / 100], btype="band")
    return lfilter(b, a, x, axis=0)


def finish(x):
    return np.clip(x, -1024, 1024) / 32


def plain_input(data_dir, eeg_id, start, order=1, low=1.6, high=30.0):
    """Validation input by hand: bipolar, NaN -> 0, scipy band-pass, clip, /32."""
    return finish(scipy_filter(raw_bipolar(data_dir, eeg_id, start), order, low, high))


@pytest.mark.parametrize("epoch, low_w, mid_w", [(0, 0.3, 0.5), (15, 0.3 * 0.4, 0.5 * 0.4), (29, 0.02, 0.02)])
def test_curriculum_weights_by_hand(tiny_data, epoch, low_w, mid_w):
    # docs/solution.md §5: factor (1 - 1.2 e / E), E = 30: e 15 -> 0.4; e 29 -> -0.16, so both floored at 0.02
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


def test_time_reversal_comes_before_the_filter_and_mirrors_center(tiny_data):
    df = rows(tiny_data)
    ds = CustomDataset(df, make_cfg(tiny_data, time_reverse_p=1.0, flip_p=0.0, band_aug_p=0.0), mode="train")
    torch.manual_seed(0)
    seen = set()
    for i in (2, 3, 5):
        item = ds[i]
        center = 10_000 - int(item["center"])  # the centre before reversal
        start = int(df.eeg_label_offset_seconds[i] * 200) + 5000 - center
        bip = raw_bipolar(tiny_data, df.eeg_id[i], start)
        out = item["input"].numpy()
        np.testing.assert_allclose(out, finish(scipy_filter(bip[::-1])), rtol=1e-5, atol=1e-5)
        # filtering first would leave the causal filter's start-up transient at the window's end
        assert not np.allclose(out, finish(scipy_filter(bip))[::-1], rtol=1e-3, atol=1e-3)
        seen.add(int(item["center"]))
    assert len(seen) > 1  # the shift was active, so the centre mirror was exercised


def test_hemisphere_swap_exchanges_left_and_right_before_the_filter(tiny_data):
    df = rows(tiny_data)
    ds = CustomDataset(df, make_cfg(tiny_data, time_reverse_p=0.0, flip_p=1.0, band_aug_p=0.0, shift_max=0))
    out = ds[1]["input"].numpy()
    bip = raw_bipolar(tiny_data, df.eeg_id[1], int(df.eeg_label_offset_seconds[1] * 200))
    names = [f"{a}-{b}" for a, b in MONTAGE]
    assert names[0] == "Fp1-F7" and names[1] == "Fp2-F8"
    np.testing.assert_allclose(out, finish(scipy_filter(bip[:, np.arange(16) ^ 1])), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, plain_input(tiny_data, df.eeg_id[1], int(df.eeg_label_offset_seconds[1] * 200)),
                           rtol=1e-3, atol=1e-3)


def by_hand(bip, reverse, swap, aug, order):
    """The documented order: reverse, swap, band-pass, band augmentation (order max(order, 1)), clip, /32."""
    x = bip[::-1] if reverse else bip
    x = x[:, np.arange(16) ^ 1] if swap else x
    x = scipy_filter(x, order)
    if aug is not None:
        channels, low, high = aug
        ch = np.unique(channels)
        x = x.copy()
        x[:, ch] = scipy_filter(x[:, ch], max(order, 1), low, high)
    return finish(x)


@pytest.mark.parametrize("order", [1, 2])
def test_operation_order_and_draw_order(tiny_data, order):
    """transform's draws, in the documented order: reversal, swap, band augmentation, then the band
    augmentation's own (channels, low, high); every combination of the three flags against by_hand."""
    df = rows(tiny_data)
    cfg = make_cfg(tiny_data, butter_order=order, time_reverse_p=0.5, flip_p=0.5, band_aug_p=0.5)
    ds = CustomDataset(df, cfg, mode="train")
    start = int(df.eeg_label_offset_seconds[3] * 200)
    raw = pd.read_parquet(tiny_data / "train_eegs" / f"{df.eeg_id[3]}.parquet").to_numpy(np.float32)
    raw = raw[start:start + 10_000]
    bip = raw_bipolar(tiny_data, df.eeg_id[3], start)
    flags_seen, swap_aug_order_checked = set(), False
    for seed in range(40):
        out = ds.transform(raw, 5000, np.random.default_rng(seed), 3)
        replay = np.random.default_rng(seed)
        reverse, swap, aug = (replay.random(3) < 0.5).tolist()
        params = band_aug_params(replay, 8, cfg.band_aug_low, cfg.band_aug_high) if aug else None
        np.testing.assert_allclose(out["input"].numpy(), by_hand(bip, reverse, swap, params, order),
                                   rtol=1e-5, atol=1e-5)
        assert out["_center"] == (5000 if not reverse else 10_000 - 5000)
        flags_seen.add((reverse, swap, aug))
        if swap and aug and set(params[0].tolist()) != set((params[0] ^ 1).tolist()):
            # the swap comes before the band augmentation, so the drawn channels index the swapped signal
            wrong = by_hand(bip, reverse, False, params, order)[:, np.arange(16) ^ 1]  # augment, then swap
            assert not np.allclose(out["input"].numpy(), wrong, rtol=1e-3, atol=1e-3)
            swap_aug_order_checked = True
    assert len(flags_seen) == 8 and swap_aug_order_checked


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
    assert {k for k in a if a[k] != b[k]} == {"name", "butter_order"}
    assert (a["butter_order"], b["butter_order"]) == (1, 2)
    section7 = dict(model="mdl_2", dataset="ds_2", train_df="train_folded_6k6c_1up.csv", epochs=30, lr=1e-3,
                    batch_size=64, grad_accumulation=3, clip_grad=4.0, mixed_precision=True, eval_epochs=2,
                    reload_train_loader=False, optimizer="Adam", weight_decay=0.0, schedule="cosine", pool="gem")
    assert {k: a[k] for k in section7} == section7
    section5 = dict(butter_low=1.6, butter_high=30.0, time_reverse_p=0.5, flip_p=0.5, band_aug_p=0.2,
                    band_aug_max_channels=8, band_aug_low=[1.6, 2.0], band_aug_high=[10, 30], shift_max=3333,
                    clip_value=1024.0, scale=32.0, extra_dropouts=False, sq_dropout=0.2, rotary_trainable=True)
    assert {k: a[k] for k in section5} == section5
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

"""ds_1 / ds_1a (docs/solution.md §5): validation output against a plain step-by-step computation,
augmentations, fallbacks."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.signal import butter, lfilter

from conftest import write_recording
from data import ds_1, ds_1a
from data.signal import LABEL_COLS, band_aug_params
from utils.config import ConfigError, load_config
from utils.io import DataError

# docs/solution.md §5, written out here on purpose (not imported): the double banana and the
# left/right pairs
BANANA = ["Fp1-F7", "Fp2-F8", "F7-T3", "F8-T4", "T3-T5", "T4-T6", "T5-O1", "T6-O2",
          "Fp1-F3", "Fp2-F4", "F3-C3", "F4-C4", "C3-P3", "C4-P4", "P3-O1", "P4-O2"]
PAIRS = {"Fp1": "Fp2", "F3": "F4", "C3": "C4", "P3": "P4", "F7": "F8", "T3": "T4", "T5": "T6", "O1": "O2"}


def plain_section5(parquet, start, flip=False):
    """Section 5 by hand: window, (flip), montage, NaN -> 0, butter(2, 0.5-20 Hz) + lfilter, clip, /32."""
    df = pd.read_parquet(parquet).iloc[start:start + 10_000]
    if flip:
        swap = {**PAIRS, **{v: k for k, v in PAIRS.items()}}
        df = df.rename(columns={c: swap.get(c, c) for c in df.columns})
    x = np.stack([df[a].to_numpy(np.float64) - df[b].to_numpy(np.float64)
                  for a, b in (n.split("-") for n in BANANA)], axis=1)
    if len(x) < 10_000:
        x = np.concatenate([x, np.full((10_000 - len(x), 16), np.nan)])
    x = np.nan_to_num(x, nan=0.0)
    b, a = butter(2, [0.5 / 100, 20 / 100], btype="band")
    x = lfilter(b, a, x, axis=0)
    return np.clip(x, -1024, 1024) / 32


def make_cfg(data_dir, name="cfg_5a", **kw):
    cfg = load_config(name)
    cfg.data_dir, cfg.cache_dir = str(data_dir), str(data_dir / "cache")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def rows(eeg_ids, offsets):
    votes = np.tile(np.array([[1, 2, 0, 0, 3, 4]]), (len(eeg_ids), 1))
    df = pd.DataFrame(dict(eeg_id=eeg_ids, eeg_label_offset_seconds=np.asarray(offsets, float)))
    df[LABEL_COLS] = votes
    return df


@pytest.fixture
def one_rec(tmp_path):
    """A 120 s recording with a NaN stretch; rows at 0 s, 30 s and 70 s."""
    write_recording(tmp_path / "train_eegs" / "1.parquet", 24_000, seed=3, nan_rows=slice(7000, 7400))
    return tmp_path, rows([1, 1, 1], [0, 30, 70])


@pytest.mark.parametrize("module,name", [(ds_1, "cfg_5a"), (ds_1a, "cfg_1")])
def test_shapes_dtypes_and_validation_equals_plain_section5(one_rec, module, name):
    data_dir, df = one_rec
    cfg = make_cfg(data_dir, name)
    for mode in ("train", "val"):
        item = module.CustomDataset(df, cfg, mode)[1]
        assert item["input"].shape == (10_000, 16) and item["input"].dtype == torch.float32
        assert item["target"].shape == (6,) and item["target"].dtype == torch.float32
        assert item["center"].dtype == torch.int64 and item["center"].dim() == 0
    val = module.CustomDataset(df, cfg, "val")
    for i, off in enumerate([0, 30, 70]):
        item = val[i]
        want = plain_section5(data_dir / "train_eegs" / "1.parquet", off * 200)
        np.testing.assert_allclose(item["input"].numpy(), want, rtol=1e-4, atol=1e-4)
        assert int(item["center"]) == 5000
        np.testing.assert_allclose(item["target"].numpy(), np.array([1, 2, 0, 0, 3, 4]) / 10, rtol=1e-6)
    a, b = val[2]["input"], val[2]["input"]
    assert torch.equal(a, b)  # deterministic


def no_aug(data_dir, **kw):
    base = dict(flip_p=0.0, band_aug_p=0.0, center_jitter_p=0.0, shift_max=0)
    return make_cfg(data_dir, **{**base, **kw})


def test_flip_swaps_left_and_right_electrodes(one_rec):
    data_dir, df = one_rec
    item = ds_1.CustomDataset(df, no_aug(data_dir, flip_p=1.0), "train")[1]
    want = plain_section5(data_dir / "train_eegs" / "1.parquet", 30 * 200, flip=True)
    np.testing.assert_allclose(item["input"].numpy(), want, rtol=1e-4, atol=1e-4)
    # mirrored head = even/odd bipolar channels exchanged (the montage alternates left/right)
    plain = plain_section5(data_dir / "train_eegs" / "1.parquet", 30 * 200)
    np.testing.assert_allclose(item["input"].numpy(), plain[:, np.arange(16) ^ 1], rtol=1e-4, atol=1e-4)


def test_shift_and_center_semantics(one_rec):
    data_dir, df = one_rec
    ds = ds_1.CustomDataset(df, no_aug(data_dir, shift_max=3333), "train")
    torch.manual_seed(0)
    centers = []
    for _ in range(6):
        item = ds[1]  # offset 30 s = sample 6000
        center = int(item["center"])
        centers.append(center)
        start = 6000 + 5000 - center  # center marks the label centre inside the shifted window
        want = plain_section5(data_dir / "train_eegs" / "1.parquet", start)
        np.testing.assert_allclose(item["input"].numpy(), want, rtol=1e-4, atol=1e-4)
        assert 5000 - 3333 <= center <= 5000 + 3333
    assert len(set(centers)) > 1
    # the first row (offset 0) cannot move left of the file start: its centre never exceeds 5000
    assert max(int(ds[0]["center"]) for _ in range(20)) <= 5000


def test_augmentation_rates(one_rec):
    data_dir, df = one_rec
    df = df.iloc[[1]]
    plain = ds_1.CustomDataset(df, no_aug(data_dir), "val")[0]["input"].numpy()
    n = 400  # numpy comparisons below: torch ops on tiny tensors are slow on a busy CPU
    torch.manual_seed(1)
    ds = ds_1.CustomDataset(df, no_aug(data_dir, flip_p=0.5), "train")
    flips = [not np.allclose(ds[0]["input"].numpy(), plain) for _ in range(n)]
    assert abs(np.mean(flips) - 0.5) < 0.08
    ds = ds_1.CustomDataset(df, no_aug(data_dir, band_aug_p=0.2), "train")
    changed = [int((np.abs(ds[0]["input"].numpy() - plain).max(0) > 1e-6).sum()) for _ in range(n)]
    assert abs(np.mean(np.array(changed) > 0) - 0.2) < 0.06
    assert max(changed) <= 8
    ds = ds_1.CustomDataset(df, no_aug(data_dir, center_jitter_p=0.7), "train")
    shifts = np.array([int(ds[0]["center"]) - 5000 for _ in range(n)])
    assert abs(np.mean(shifts != 0) - 0.7) < 0.08
    assert np.abs(shifts).max() <= 2400 // 3 and np.abs(shifts).max() > 600  # cfg_5a: enlarge_len 2400
    # ds_1a never jitters, whatever the config says
    ds = ds_1a.CustomDataset(df, no_aug(data_dir, center_jitter_p=0.7), "train")
    assert all(int(ds[0]["center"]) == 5000 for _ in range(30))


class DrawStub:
    """A Generator stand-in: random() -> 0.5 (so p 0 never fires, p 1 always), uniform(a, b) -> a chosen float."""

    def __init__(self, value):
        self.value, self.calls = value, []

    def random(self):
        return 0.5

    def uniform(self, a, b):
        self.calls.append((a, b))
        return self.value


def test_center_jitter_is_int_of_a_float_uniform(one_rec):
    data_dir, df = one_rec
    ds = ds_1.CustomDataset(df, no_aug(data_dir, center_jitter_p=1.0), "train")  # cfg_5a: enlarge_len 2400
    x = np.zeros((10_000, 20), np.float32)
    # the reference's draw: int(uniform(center - 800, center + 800)), truncated, upper end excluded
    for value, center in [(5800 - 1e-7, 5799), (4200.9, 4200), (5012.5, 5012)]:
        rng = DrawStub(value)
        assert ds.transform(x, 5000, rng, 0)["_center"] == center
        assert rng.calls == [(4200, 5800)]
    # a real Generator through the dataset: a jitter of 6 // 3 = 2 gives -2 .. +1, never +2
    ds = ds_1.CustomDataset(df.iloc[[1]], no_aug(data_dir, center_jitter_p=1.0, enlarge_len=6), "train")
    torch.manual_seed(0)
    assert {int(ds[0]["center"]) - 5000 for _ in range(60)} == {-2, -1, 0, 1}


def test_band_aug_parameter_ranges():
    rng = np.random.default_rng(0)
    cfg = load_config("cfg_5a")
    draws = [band_aug_params(rng, 8, cfg.band_aug_low, cfg.band_aug_high) for _ in range(3000)]
    n = np.array([len(c) for c, _, _ in draws])
    lows = np.array([lo for _, lo, _ in draws])
    highs = np.array([hi for _, _, hi in draws])
    assert n.min() == 1 and n.max() == 8
    assert set(highs.tolist()) == set(range(10, 20))
    assert lows.min() >= 0.0001 and lows.max() < 2 and lows.max() > 1.9
    # with replacement: some draws repeat a channel
    assert any(len(set(c.tolist())) < len(c) for c, _, _ in draws)


def test_jitter_needs_enlarge_len(one_rec):
    data_dir, df = one_rec
    cfg = make_cfg(data_dir, "cfg_1", center_jitter_p=0.7)  # cfg_1 has no zoom length
    with pytest.raises(ConfigError, match="enlarge_len"):
        ds_1.CustomDataset(df, cfg, "train")


def test_fallbacks_short_recording_and_nan_channel(tmp_path):
    write_recording(tmp_path / "train_eegs" / "2.parquet", 6000, seed=4)  # 30 s
    x = write_recording(tmp_path / "train_eegs" / "3.parquet", 12_000, seed=5)
    x[:, 0] = np.nan  # Fp1 missing throughout
    pd.DataFrame(x, columns=pd.read_parquet(tmp_path / "train_eegs" / "2.parquet").columns).to_parquet(
        tmp_path / "train_eegs" / "3.parquet", index=False)
    ds = ds_1.CustomDataset(rows([2, 3], [0, 0]), make_cfg(tmp_path), "val")
    short = ds[0]["input"].numpy()
    assert short.shape == (10_000, 16) and np.isfinite(short).all()
    np.testing.assert_allclose(short, plain_section5(tmp_path / "train_eegs" / "2.parquet", 0), rtol=1e-4, atol=1e-4)
    nan_ch = ds[1]["input"].numpy()
    assert np.isfinite(nan_ch).all()
    # Fp1 -> 0: the two Fp1 channels become -F7 and -F3 (filtered), the others are untouched
    np.testing.assert_allclose(nan_ch, plain_section5(tmp_path / "train_eegs" / "3.parquet", 0), rtol=1e-4, atol=1e-4)


def test_missing_file_and_nan_recordings(tmp_path):
    write_recording(tmp_path / "train_eegs" / "4.parquet", 30_000, seed=6, nan_rows=slice(0, 12_000))
    write_recording(tmp_path / "train_eegs" / "5.parquet", 12_000, seed=7, nan_rows=slice(None))
    ds = ds_1.CustomDataset(rows([4, 5, 9], [0, 0, 0]), make_cfg(tmp_path), "val")
    # an all-NaN window inside a recording with data elsewhere: documented zero fallback
    assert torch.count_nonzero(ds[0]["input"]) == 0
    with pytest.raises(DataError, match=r"5\.parquet: recording is NaN throughout"):
        ds[1]
    with pytest.raises(DataError, match=r"train_eegs/9\.parquet: eeg file not found"):
        ds[2]

"""The shared core: the decoded-recording cache, the window rule of the base dataset, shared layers."""
import os
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_recording
from data.base import window_start
from data.eeg_store import EEGStore
from data.signal import BIPOLAR_FLIP, EEG_COLUMNS, ELECTRODE_FLIP, MONTAGE, to_bipolar
from models.layers import GeM, MelFrontEnd, channel_dropout, kl_loss
from utils.io import DataError


def test_store_window_matches_parquet_and_caches_once(tmp_path):
    x = write_recording(tmp_path / "eegs" / "7.parquet", 30_000, seed=1)
    store = EEGStore(tmp_path / "eegs", tmp_path / "cache")
    np.testing.assert_array_equal(store.window(7, 12_345, 10_000), x[12_345:22_345])
    assert store.length(7) == 30_000
    files = list(store.cache_dir.glob("7_*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    EEGStore(tmp_path / "eegs", tmp_path / "cache").window(7, 0, 5)  # a new store reuses the cache
    assert files[0].stat().st_mtime_ns == mtime


def test_store_rebuilds_when_source_changes(tmp_path):
    write_recording(tmp_path / "eegs" / "7.parquet", 20_000, seed=1)
    EEGStore(tmp_path / "eegs", tmp_path / "cache").window(7, 0, 10)
    time.sleep(0.01)
    y = write_recording(tmp_path / "eegs" / "7.parquet", 25_000, seed=2)
    os.utime(tmp_path / "eegs" / "7.parquet", ns=(time.time_ns(), time.time_ns()))
    store = EEGStore(tmp_path / "eegs", tmp_path / "cache")
    np.testing.assert_array_equal(store.window(7, 100, 50), y[100:150])
    assert len(list(store.cache_dir.glob("7_*.npy"))) == 1  # the stale copy is gone


def test_store_concurrent_builds_keep_the_cache(tmp_path, monkeypatch):
    """Two processes decoding one recording at once (DataLoader workers, the demo's parallel runs):
    the slower one must not delete the copy the faster one has just written and is reading."""
    import data.eeg_store as eeg_store

    x = write_recording(tmp_path / "eegs" / "7.parquet", 5_000, seed=3)
    slow, fast = EEGStore(tmp_path / "eegs", tmp_path / "cache"), EEGStore(tmp_path / "eegs", tmp_path / "cache")
    real_read, real_write = eeg_store.read_eeg_parquet, eeg_store.atomic_write
    built = []

    def read_while_other_builds(path):
        out = real_read(path)
        monkeypatch.setattr(eeg_store, "read_eeg_parquet", real_read)
        monkeypatch.setattr(eeg_store, "atomic_write", real_write)
        built.append(fast.build(7))  # the other process finishes first, while this one is decoding
        monkeypatch.setattr(eeg_store, "atomic_write", write_after_other_reads)
        return out

    def write_after_other_reads(path, fn):
        # the other process opens its fresh copy just before this one writes its own
        np.testing.assert_array_equal(np.load(built[0], mmap_mode="r")[10:30], x[10:30])
        real_write(path, fn)

    monkeypatch.setattr(eeg_store, "read_eeg_parquet", read_while_other_builds)
    slow.build(7)
    assert built and len(list(fast.cache_dir.glob("7_*.npy"))) == 1


def test_store_errors_name_the_file(tmp_path):
    store = EEGStore(tmp_path / "eegs", tmp_path / "cache")
    with pytest.raises(DataError, match=r"eegs/5\.parquet: eeg file not found"):
        store.window(5, 0, 10)
    (tmp_path / "eegs").mkdir(exist_ok=True)
    (tmp_path / "eegs" / "6.parquet").write_bytes(b"not a parquet")
    with pytest.raises(DataError, match=r"6\.parquet: unreadable parquet"):
        store.window(6, 0, 10)
    pd.DataFrame({"Fp1": np.zeros(10, np.float32)}).to_parquet(tmp_path / "eegs" / "8.parquet")
    with pytest.raises(DataError, match=r"8\.parquet: missing eeg column\(s\) F3"):
        store.window(8, 0, 10)


def test_window_start_shift_clip_and_center():
    rng = np.random.default_rng(0)
    starts = [window_start(20_000, 60_000, 10_000, 3333, rng) for _ in range(2000)]
    s = np.array([a for a, _ in starts])
    c = np.array([b for _, b in starts])
    assert s.min() >= 20_000 - 3333 and s.max() <= 20_000 + 3332
    assert s.min() < 20_000 - 3000 and s.max() > 20_000 + 3000  # uses the whole range
    np.testing.assert_array_equal(c, 5000 + 20_000 - s)
    assert window_start(20_000, 60_000, 10_000, 3333, None) == (20_000, 5000)
    # clipped to the file at both ends
    assert all(window_start(100, 60_000, 10_000, 3333, rng)[0] >= 0 for _ in range(200))
    late = [window_start(50_000, 60_000, 10_000, 3333, rng) for _ in range(200)]
    assert all(a <= 50_000 for a, _ in late) and all(b == 5000 + 50_000 - a for a, b in late)


class UniformStub:
    """Stands in for a numpy Generator whose uniform(a, b) returns a chosen float."""

    def __init__(self, value):
        self.value, self.calls = value, []

    def uniform(self, a, b):
        self.calls.append((a, b))
        return self.value


def test_window_shift_is_int_of_a_float_uniform():
    # the reference's draw: int(uniform(offset - shift, offset + shift)), truncated, upper end excluded
    for value, start in [(23_333 - 1e-7, 23_332), (20_012.97, 20_012), (16_667.0, 16_667)]:
        rng = UniformStub(value)
        assert window_start(20_000, 60_000, 10_000, 3333, rng) == (start, 5000 + 20_000 - start)
        assert rng.calls == [(16_667, 23_333)]
    # a real Generator: a shift of 3 gives offset-3 .. offset+2, never offset+3
    rng = np.random.default_rng(0)
    starts = {window_start(20_000, 60_000, 10_000, 3, rng)[0] for _ in range(500)}
    assert starts == set(range(20_000 - 3, 20_000 + 3))


def test_montage_and_flip_maps():
    x = np.arange(20, dtype=np.float32)[None, :] ** 2
    bip = to_bipolar(x)[0]
    for k, (a, b) in enumerate(MONTAGE):
        assert bip[k] == EEG_COLUMNS.index(a) ** 2 - EEG_COLUMNS.index(b) ** 2
    # mirroring the electrodes mirrors the bipolar channels: even <-> odd
    np.testing.assert_array_equal(to_bipolar(x[:, ELECTRODE_FLIP]), to_bipolar(x)[:, BIPOLAR_FLIP])


def test_channel_dropout_rate_and_counts():
    torch.manual_seed(0)
    out = channel_dropout(torch.ones(20_000, 16, 3), p=0.5, max_channels=8)
    zeroed = (out[:, :, 0] == 0).sum(1)
    hit = zeroed > 0
    assert abs(hit.float().mean().item() - 0.5) < 0.02
    assert zeroed.max().item() <= 8 and zeroed[hit].min().item() >= 1
    # 1..8 draws with replacement: mean distinct channels is below the mean draw count 4.5
    assert 3.5 < zeroed[hit].float().mean().item() < 4.5
    assert (out[:, :, 1] == out[:, :, 0]).all()  # whole channels are zeroed
    assert channel_dropout(torch.ones(3, 16), 0.0, 8).eq(1).all()


def test_gem_equals_formula_and_mel_is_float32_under_autocast():
    x = torch.rand(2, 3, 4, 5) + 0.1
    np.testing.assert_allclose(GeM()(x).detach(), x.pow(3).mean((-2, -1)).pow(1 / 3), rtol=1e-5)
    mel = MelFrontEnd(dict(sample_rate=200, n_fft=256, win_length=128, hop_length=32,
                           f_min=0.5, f_max=40, n_mels=32), top_db=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mel(torch.randn(2, 16, 2000).bfloat16())
    assert out.dtype == torch.float32 and out.shape == (2, 16, 32, 63)
    logits = torch.randn(4, 6)
    target = torch.softmax(torch.randn(4, 6), 1)
    ref = (target * (target.log() - torch.log_softmax(logits, 1))).sum(1).mean()
    assert torch.allclose(kl_loss(logits, target), ref, atol=1e-6)

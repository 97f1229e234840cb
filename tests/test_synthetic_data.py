"""Synthetic data: Kaggle format (vs the real sample), the six patterns, vote statistics, determinism."""
import hashlib
import time

import numpy as np
import pandas as pd
import pytest
from scipy.signal import periodogram

from data.signal import CHAINS, CLASSES, EEG_COLUMNS, FS, LABEL_COLS, bandpass, to_bipolar
from data.synthetic import (GPD, GRDA, LPD, LRDA, OTHER, SEIZURE, TRAIN_COLUMNS, Group, Recording,
                            generate_dataset, plan_patient, synth_recording)
from utils.io import DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    t0 = time.time()
    summary = generate_dataset(out, seed=5, n_patients=4, n_test=2, progress=False)
    print(f"tiny dataset: {summary} in {time.time() - t0:.1f} s")
    return out


def test_format_matches_real_sample(synth, shared_sample):
    real_eeg = pd.read_parquet(next((shared_sample / "test_eegs").glob("*.parquet")))
    real_spec = pd.read_parquet(next((shared_sample / "test_spectrograms").glob("*.parquet")))
    for kind, real in (("eegs", real_eeg), ("spectrograms", real_spec)):
        for split in ("train", "test"):
            for path in sorted((synth / f"{split}_{kind}").glob("*.parquet"))[:3]:
                df = pd.read_parquet(path)
                assert list(df.columns) == list(real.columns), path
                assert list(df.dtypes) == list(real.dtypes), path
    for path in (synth / "test_eegs").glob("*.parquet"):
        assert len(pd.read_parquet(path)) == len(real_eeg) == 10_000
    for path in (synth / "test_spectrograms").glob("*.parquet"):
        spec = pd.read_parquet(path)
        assert len(spec) == len(real_spec) == 300 and list(spec["time"]) == list(real_spec["time"])
    for name in ("test.csv", "sample_submission.csv"):
        ours, real = pd.read_csv(synth / name), pd.read_csv(shared_sample / name)
        assert list(ours.columns) == list(real.columns) and list(ours.dtypes) == list(real.dtypes)
    assert np.allclose(pd.read_csv(synth / "sample_submission.csv")[LABEL_COLS].sum(1), 1)


def test_train_csv_layout_and_consistency(synth):
    df = pd.read_csv(synth / "train.csv")
    assert list(df.columns) == TRAIN_COLUMNS
    for c in TRAIN_COLUMNS:
        kind = {"eeg_label_offset_seconds": "f", "spectrogram_label_offset_seconds": "f"}.get(c, "i")
        if c == "expert_consensus":
            assert set(df[c]) <= set(CLASSES)
        else:
            assert df[c].dtype.kind == kind and df[c].dtype.itemsize == 8, c
    assert df["label_id"].is_unique
    assert (df["expert_consensus"] == [CLASSES[i] for i in df[LABEL_COLS].to_numpy().argmax(1)]).all()
    assert (df.groupby("eeg_id")["patient_id"].nunique() == 1).all()
    assert df.groupby("eeg_id")["eeg_sub_id"].apply(lambda s: list(s) == list(range(len(s)))).all()
    # centres agree: the recording starts (spec offset - eeg offset + 275) s into its spectrogram
    start = df["spectrogram_label_offset_seconds"] - df["eeg_label_offset_seconds"] + 275
    assert (df.assign(start=start).groupby("eeg_id")["start"].nunique() == 1).all() and (start >= 275).all()
    for eeg_id, g in df.groupby("eeg_id"):
        n = len(pd.read_parquet(synth / "train_eegs" / f"{eeg_id}.parquet"))
        assert n >= 50 * FS and (g["eeg_label_offset_seconds"] * FS + 50 * FS <= n).all()
    for spec_id, g in df.groupby("spectrogram_id"):
        spec = pd.read_parquet(synth / "train_spectrograms" / f"{spec_id}.parquet")
        assert (g["spectrogram_label_offset_seconds"] + 600 <= 2 * len(spec)).all()
    latent = pd.read_csv(synth / "synthetic_latent.csv")
    assert list(latent.columns) == ["label_id", "eeg_id", *LABEL_COLS]
    assert set(latent["label_id"]) == set(df["label_id"]) and np.allclose(latent[LABEL_COLS].sum(1), 1)


def test_spectrogram_is_computed_from_the_eeg(synth):
    df = pd.read_csv(synth / "train.csv").iloc[0]
    x = pd.read_parquet(synth / "train_eegs" / f"{df.eeg_id}.parquet").to_numpy()
    spec = pd.read_parquet(synth / "train_spectrograms" / f"{df.spectrogram_id}.parquet")
    start = int(df.spectrogram_label_offset_seconds - df.eeg_label_offset_seconds + 275)
    k = (start + 1) // 2 + 3  # a frame [2k, 2k+2) s inside the recording
    seg = x[(2 * k - start) * FS:(2 * k - start + 2) * FS]
    ll = CHAINS["LL"]
    psd = np.mean([periodogram(seg[:, EEG_COLUMNS.index(a)] - seg[:, EEG_COLUMNS.index(b)], fs=FS,
                               window="hann", nfft=1024, scaling="density")[1][3:103]
                   for a, b in zip(ll[:-1], ll[1:])], axis=0)
    if np.isfinite(seg).all():
        assert np.allclose(spec.filter(like="LL_").iloc[k].to_numpy(), psd, rtol=0.01, atol=0.02)
    assert spec.iloc[: start // 2].drop(columns="time").isna().all().all()  # before the recording: no EEG


def one_pattern(cls, side=0, seed=0, p=1.0):
    latent = np.full(6, (1 - p) / 5)
    latent[cls] = p
    rec = Recording(100, [Group([20], latent, np.zeros(6, int), side)], np.random.SeedSequence(seed), True)
    x = synth_recording(rec, np.random.default_rng(seed), artefacts=False)
    return x  # label centre at 45 s: pattern covers at least 30-60 s, 80-100 s is background


def region(x, lo=31, hi=59):
    return x[lo * FS:hi * FS]


def bip(x, low=0.5, high=20):
    return bandpass(to_bipolar(np.nan_to_num(x)), low, high, 2)


@pytest.mark.parametrize("cls", [SEIZURE, LPD, LRDA])
def test_lateralised_patterns_on_their_hemisphere(cls):
    for side in (0, 1):
        for seed in range(3):
            b = bip(one_pattern(cls, side, seed))
            power = (region(b) ** 2).mean(0)
            left, right = power[0::2].sum(), power[1::2].sum()
            assert (left > 1.3 * right) if side == 0 else (right > 1.3 * left), (CLASSES[cls], side, seed)


@pytest.mark.parametrize("cls", [SEIZURE, LPD, GPD, LRDA, GRDA])
def test_patterns_stand_out_of_background(cls):
    for seed in range(3):
        b = bip(one_pattern(cls, seed % 2, seed))
        ratio = (region(b) ** 2).mean() / (b[80 * FS:] ** 2).mean()
        assert ratio > 2.0, (CLASSES[cls], seed, ratio)
    b = bip(one_pattern(OTHER, 0, 0))
    assert (region(b) ** 2).mean() / (b[80 * FS:] ** 2).mean() < 1.5


def envelope_peak(x, lo=0.5, hi=3.0):
    """Dominant repetition rate (Hz) of the sharp transients on the strongest bipolar channel."""
    b = region(bip(x, 5, 30))
    ch = (b ** 2).mean(0).argmax()
    env = np.abs(b[:, ch]) - np.abs(b[:, ch]).mean()
    f, p = periodogram(env, fs=FS, nfft=1 << 16)
    keep = (f >= lo) & (f <= hi)
    return f[keep][p[keep].argmax()]


@pytest.mark.parametrize("cls, lo, hi", [(LPD, 0.75, 1.6), (GPD, 0.95, 2.3)])
def test_periodic_discharge_rate(cls, lo, hi):
    for seed in range(3):
        rate = envelope_peak(one_pattern(cls, seed % 2, seed))
        assert lo <= rate <= hi, (CLASSES[cls], seed, rate)


@pytest.mark.parametrize("cls", [LRDA, GRDA])
def test_rhythmic_delta_frequency_and_grda_frontal(cls):
    for seed in range(3):
        x = one_pattern(cls, seed % 2, seed)
        b = region(bip(x))
        ch = (b ** 2).mean(0).argmax()
        f, p = periodogram(b[:, ch], fs=FS, nfft=1 << 15)
        assert 1.6 <= f[p.argmax()] <= 3.2
        if cls == GRDA:
            ref = region(bandpass(x[:, :19] - x[:, :19].mean(0), 1.5, 3.5, 2))
            power = dict(zip(EEG_COLUMNS, (ref ** 2).mean(0)))
            front = np.mean([power[e] for e in ("Fp1", "Fp2", "F3", "F4", "F7", "F8", "Fz")])
            back = np.mean([power[e] for e in ("O1", "O2", "P3", "P4", "Pz")])
            assert front > 2 * back


def test_seizure_frequency_rises():
    x = one_pattern(SEIZURE, 0, 1)
    b = bip(x)
    ch = (region(b) ** 2).mean(0).argmax()

    def peak(lo, hi):
        f, p = periodogram(b[lo * FS:hi * FS, ch], fs=FS, nfft=1 << 14)
        keep = (f > 1.5) & (f < 10)
        return f[keep][p[keep].argmax()]
    assert peak(50, 58) > peak(28, 36) + 1.0


def test_vote_statistics_near_spec():
    recs = [r for s in np.random.SeedSequence(11).spawn(1500) for r in plan_patient(s)]
    votes = np.array([r.groups[0].votes for r in recs])  # one row per eeg, as docs/solution.md §3 counts
    n = votes.sum(1)
    share = lambda lo, hi: np.mean((n >= lo) & (n <= hi))  # noqa: E731
    assert abs(share(1, 1) - 0.19) < 0.03 and abs(share(2, 2) - 0.10) < 0.03
    assert abs(share(3, 3) - 0.33) < 0.03 and abs(share(4, 6) - 0.055) < 0.02
    assert share(7, 9) == 0 and abs(share(10, 28) - 0.32) < 0.03
    t = votes / n[:, None]
    hi = n >= 10
    mean_hi = dict(zip(LABEL_COLS, t[hi].mean(0)))
    for col, ref in (("other_vote", 0.49), ("lpd_vote", 0.18), ("gpd_vote", 0.125), ("grda_vote", 0.09),
                     ("lrda_vote", 0.07), ("seizure_vote", 0.04)):
        assert abs(mean_hi[col] - ref) < 0.05, (col, mean_hi[col])
    assert 0.05 < np.mean(t[hi].max(1) == 1) < 0.25 and abs(t[hi].max(1).mean() - 0.73) < 0.05
    assert abs(np.mean(t[~hi].max(1) == 1) - 0.78) < 0.06 and abs(t[~hi, 0].mean() - 0.21) < 0.05
    vals, counts = np.unique(n[hi], return_counts=True)
    assert set(vals[np.argsort(counts)[-2:]]) == {13, 15}


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_deterministic_and_no_silent_overwrite(synth, tmp_path):
    generate_dataset(tmp_path / "a", seed=5, n_patients=4, n_test=2, progress=False)
    assert digest(tmp_path / "a") == digest(synth)
    generate_dataset(tmp_path / "b", seed=6, n_patients=4, n_test=2, progress=False)
    assert (tmp_path / "b" / "train.csv").read_bytes() != (synth / "train.csv").read_bytes()
    with pytest.raises(DataError, match="already holds a dataset"):
        generate_dataset(tmp_path / "a", seed=5, n_patients=4, progress=False)
    (tmp_path / "a" / "train_folded.csv").write_text("stale")
    generate_dataset(tmp_path / "a", seed=7, n_patients=3, n_test=1, force=True, progress=False)
    assert not (tmp_path / "a" / "train_folded.csv").exists()  # folds of the old data are gone
    assert len(list((tmp_path / "a" / "test_eegs").iterdir())) == 1

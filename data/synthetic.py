"""Synthetic HMS-format dataset: EEG with the six patterns, expert votes and spectrograms (issue 2).

Why synthetic: the Kaggle data cannot ship with the project, yet every script must run end to end
and a small model must be able to learn something in a few CPU epochs. Each labelled group of
sub-windows gets latent class probabilities; the EEG carries each class's pattern with an amplitude
that grows with its probability (so the latent is recoverable from the signal), the votes are
multinomial draws from it with the totals of docs/solution.md §3, and the latent goes to synthetic_latent.csv
for the oracle KL. Randomness: one SeedSequence child per patient, so a patient's data does not
depend on how many patients are generated; ids come from the master generator.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.fft as sfft
from tqdm import tqdm

from data.signal import CHAINS, CLASSES, EEG_COLUMNS, FS, LABEL_COLS
from utils.io import DataError, atomic_write, atomic_write_csv, read_csv_checked
from utils.metric import MetricError, kl_divergence, votes_to_target

TRAIN_COLUMNS = ["eeg_id", "eeg_sub_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_sub_id",
                 "spectrogram_label_offset_seconds", "label_id", "patient_id", "expert_consensus", *LABEL_COLS]
# outputs of a dataset; --force removes them (train_folded*.csv too: they describe the old data)
DATASET_FILES = ["train.csv", "test.csv", "sample_submission.csv", "synthetic_latent.csv",
                 "synthetic_test_latent.csv"]
DATASET_DIRS = ["train_eegs", "train_spectrograms", "test_eegs", "test_spectrograms"]

# --- label model (docs/solution.md §3) -----------------------------------------------------
SEIZURE, LPD, GPD, LRDA, GRDA, OTHER = range(6)
LOW_TOTALS = {1: 0.19, 2: 0.10, 3: 0.33, 4: 0.025, 5: 0.015, 6: 0.015}
HIGH_FRACTION = 0.32 / (0.32 + sum(LOW_TOTALS.values()))
HIGH_TOTALS = dict(zip(range(10, 29), [2, 3, 5, 20, 9, 17, 7, 6, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1]))
# primary-class priors per vote regime; blends move mass to the neighbours below
PRIOR_HIGH = np.array([0.02, 0.17, 0.11, 0.05, 0.07, 0.58])
PRIOR_LOW = np.array([0.26, 0.14, 0.12, 0.10, 0.12, 0.26])
NEIGHBOURS = {SEIZURE: [LPD, GPD, OTHER], LPD: [GPD, SEIZURE, LRDA, OTHER], GPD: [LPD, GRDA, OTHER],
              LRDA: [GRDA, LPD, OTHER], GRDA: [LRDA, GPD, OTHER], OTHER: [LPD, GPD, GRDA, LRDA, SEIZURE]}


def draw_latent(rng, high: bool) -> np.ndarray:
    """Class probabilities of one annotated event: mostly one class, sometimes a blend of neighbours."""
    k = int(rng.choice(6, p=PRIOR_HIGH if high else PRIOR_LOW))
    p = np.zeros(6)
    if high:
        main = rng.uniform(0.45, 0.99)
        blend = rng.random() < 0.6
    else:
        blend = rng.random() < 0.2
        main = rng.uniform(0.6, 0.85) if blend else rng.uniform(0.88, 1.0)
    rest = 1.0 - main
    p[k] = main
    if blend:
        nb = int(rng.choice(NEIGHBOURS[k]))
        share = rng.uniform(0.6, 1.0)
        p[nb] += rest * share
        rest *= 1 - share
    others = [c for c in range(6) if p[c] == 0]
    p[others] += rest * rng.dirichlet(3 * PRIOR_HIGH[others])  # the residue goes mostly to common classes
    return p / p.sum()


def draw_total(rng, high: bool) -> int:
    table = HIGH_TOTALS if high else LOW_TOTALS
    vals = np.array(list(table))
    w = np.array(list(table.values()), dtype=float)
    return int(rng.choice(vals, p=w / w.sum()))


# --- layout -----------------------------------------------------------------------------------------
@dataclass
class Group:
    offsets: list  # eeg label offsets (s), ascending, one per sub-window
    latent: np.ndarray
    votes: np.ndarray
    side: int  # 0 left, 1 right (lateralised patterns)


@dataclass
class Recording:
    length_s: int
    groups: list
    seed: np.random.SeedSequence
    high: bool
    session: int = 0  # index of the patient's spectrogram session
    start_in_session: int = 0  # seconds
    eeg_id: int = 0
    label_ids: list = field(default_factory=list)


def plan_recording(rng, seed_seq, high: bool) -> Recording:
    n_groups = int(rng.choice([1, 2, 3], p=[0.8, 0.15, 0.05]))
    t = 0 if rng.random() < 0.6 else 2 * int(rng.integers(1, 7))
    groups = []
    for _ in range(n_groups):
        n_sub = 1 + min(int(rng.poisson(3.0)), 9)
        steps = 2 * rng.integers(1, 6, n_sub - 1)
        offs = t + np.concatenate([[0], np.cumsum(steps)])
        offs = offs[offs - t <= 40]
        latent = draw_latent(rng, high)
        votes = rng.multinomial(draw_total(rng, high), latent)
        groups.append(Group([int(o) for o in offs], latent, votes, int(rng.integers(0, 2))))
        t = int(offs[-1]) + 50 + 2 * int(rng.integers(0, 11))
    last = groups[-1].offsets[-1]
    tail = 0 if rng.random() < 0.5 else 2 * int(rng.integers(1, 11))
    if rng.random() < 0.05:
        tail += 2 * int(rng.integers(30, 90))  # a few recordings run several minutes
    return Recording(last + 50 + tail, groups, seed_seq, high)


def plan_patient(seed_seq) -> list:
    rng = np.random.default_rng(seed_seq)
    n_eeg = 1 + min(int(rng.poisson(3.5)), 12)
    high = rng.random(n_eeg) < HIGH_FRACTION
    recs = [plan_recording(rng, s, bool(h)) for s, h in zip(seed_seq.spawn(n_eeg), high)]
    # sessions (one spectrogram each) hold 1-2 consecutive recordings, the first 275 s in (+ a shift)
    session, pos = 0, None
    for rec in recs:
        if pos is None or rng.random() < 0.65:
            if pos is not None:
                session += 1
            pos = 275 + (0 if rng.random() < 0.6 else int(rng.integers(1, 100)))
        rec.session, rec.start_in_session = session, pos
        pos += rec.length_s + int(rng.integers(20, 200))
    return recs


# --- signals --------------------------------------------------------------------------------------
ELECTRODES = EEG_COLUMNS[:19]
POS = {"Fp1": (-1, 2), "Fp2": (1, 2), "F7": (-2, 1), "F3": (-1, 1), "Fz": (0, 1), "F4": (1, 1), "F8": (2, 1),
       "T3": (-2, 0), "C3": (-1, 0), "Cz": (0, 0), "C4": (1, 0), "T4": (2, 0), "T5": (-2, -1), "P3": (-1, -1),
       "Pz": (0, -1), "P4": (1, -1), "T6": (2, -1), "O1": (-1, -2), "O2": (1, -2)}
XY = np.array([POS[e] for e in ELECTRODES], dtype=float)
LEFT_FOCI = [ELECTRODES.index(e) for e in ("F7", "T3", "T5", "F3", "C3", "P3")]
MIRROR = np.array([ELECTRODES.index(e) for e in ELECTRODES])  # filled below
for _i, _e in enumerate(ELECTRODES):
    _x, _y = POS[_e]
    MIRROR[_i] = next(j for j, f in enumerate(ELECTRODES) if POS[f] == (-_x, _y))
_D2 = ((XY[:, None, :] - XY[None, :, :]) ** 2).sum(-1)
SPATIAL_MIX = np.exp(-_D2 / (2 * 0.6 ** 2))
SPATIAL_MIX /= np.sqrt((SPATIAL_MIX ** 2).sum(1, keepdims=True))


def focal_weights(rng, side: int, sigma: float) -> np.ndarray:
    """Gaussian field around a temporal/parasagittal focus on one hemisphere (mirrored for right)."""
    focus = LEFT_FOCI[int(rng.integers(len(LEFT_FOCI)))]
    if side:
        focus = MIRROR[focus]
    w = np.exp(-_D2[focus] / (2 * sigma ** 2))
    same = np.sign(XY[:, 0]) == np.sign(XY[focus, 0])
    return np.where(same, np.maximum(w, 0.15), 0.15 * w)


def general_weights(rng, frontal: float, jitter: float = 0.5) -> np.ndarray:
    """All electrodes, graded from front (y=2) to back (y=-2) and jittered so bipolar chains see the
    field; each hemisphere's mean equals its mirror's (no side preference)."""
    grad = 1.0 - frontal * (2 - XY[:, 1]) / 4
    j = rng.uniform(1 - jitter, 1 + jitter, len(ELECTRODES))
    return grad * np.sqrt(j * j[MIRROR])


def _taper(n: int, ramp: int) -> np.ndarray:
    env = np.ones(n)
    r = min(ramp, n // 2)
    if r > 0:
        up = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, r))
        env[:r], env[n - r:] = up, up[::-1]
    return env


def _discharge(rng, sharp: bool) -> np.ndarray:
    """One sharp periodic discharge (spike + slow after-wave), peak 1."""
    t = np.arange(int(0.6 * FS)) / FS
    width = rng.uniform(0.025, 0.045) if sharp else rng.uniform(0.06, 0.09)
    spike = -np.exp(-((t - 0.08) / width) ** 2) + 0.45 * np.exp(-((t - 0.08 - 2.2 * width) / (1.5 * width)) ** 2)
    slow = 0.35 * np.exp(-((t - 0.3) / 0.09) ** 2)
    w = spike + slow
    return w / np.abs(w).max()


def pulse_train(rng, n: int, period: float, jitter: float) -> np.ndarray:
    """n samples of zeros with a 1 at each event: random phase, `period` apart, jittered by jitter*period."""
    k = np.arange(int(n / period) + 2)
    times = (rng.uniform(0, period) + k * period + rng.normal(0, jitter * period, k.size)).astype(int)
    times = times[(times >= 0) & (times < n)]
    train = np.zeros(n)
    train[times] = 1.0
    return train


def periodic(rng, n: int, rate: float, sharp: bool) -> np.ndarray:
    train = pulse_train(rng, n, FS / rate, jitter=0.04)
    tmpl = _discharge(rng, sharp)
    return np.convolve(train, tmpl)[:n]


def rhythmic(rng, n: int, f0: float, f1: float, harm: float) -> np.ndarray:
    f = np.linspace(f0, f1, n)
    phase = 2 * np.pi * np.cumsum(f) / FS + rng.uniform(0, 2 * np.pi)
    return np.sin(phase) + harm * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))


def add_pattern(x: np.ndarray, rng, cls: int, amp: float, side: int, start: int, stop: int) -> None:
    """Add class `cls` over samples [start, stop) of x (T, 19) with peak electrode amplitude `amp` uV."""
    n = stop - start
    if n <= 0 or amp <= 0:
        return
    env = _taper(n, int(1.5 * FS))
    seg = x[start:stop]
    if cls == SEIZURE:  # evolving: frequency and amplitude rise, focal field spreading
        wave = rhythmic(rng, n, rng.uniform(2.0, 3.5), rng.uniform(5.0, 8.0), 0.5)
        grow = np.linspace(0.5, 1.2, n) * env
        spread = np.linspace(0, rng.uniform(0.2, 0.5), n)[:, None]
        w = (1 - spread) * focal_weights(rng, side, 0.8) + spread * general_weights(rng, 0.5)
        seg += (amp * 1.1 * wave * grow)[:, None] * w
    elif cls in (LPD, GPD):
        lat = cls == LPD
        wave = periodic(rng, n, rng.uniform(0.8, 1.5) if lat else rng.uniform(1.0, 2.2), sharp=True)
        w = focal_weights(rng, side, 0.8) if lat else general_weights(rng, 0.6)
        seg += (amp * 2.2 * wave * env)[:, None] * w
    elif cls in (LRDA, GRDA):
        lat = cls == LRDA
        wave = rhythmic(rng, n, *(rng.uniform(1.8, 3.0),) * 2, 0.15)
        w = focal_weights(rng, side, 0.9) if lat else general_weights(rng, 0.9, 0.4)
        seg += (amp * (1.0 if lat else 0.75) * wave * env)[:, None] * w


def background(rng, n: int) -> np.ndarray:
    """(n, 19) pink-ish, spatially smooth noise (uV) with posterior alpha; electrode std ~ 30 uV."""
    white = rng.standard_normal((n, 19), dtype=np.float32)
    spec = sfft.rfft(white, axis=0)
    f = np.fft.rfftfreq(n, 1 / FS).astype(np.float32)
    shape = 1.0 / np.sqrt(np.maximum(f, 0.3) + 0.7) * (f > 0.15) / (1 + (f / 45) ** 4)
    x = sfft.irfft(spec * shape[:, None], n=n, axis=0)
    x = x @ SPATIAL_MIX.astype(np.float32)
    x *= rng.uniform(18, 28) / (x.std() + 1e-6)
    alpha_w = np.clip(-XY[:, 1] - 0.5, 0, None) / 1.5  # posterior electrodes
    t = np.arange(n) / FS
    mod = 0.6 + 0.4 * np.sin(2 * np.pi * t * rng.uniform(0.05, 0.2) + rng.uniform(0, 6.3))
    alpha = np.sin(2 * np.pi * rng.uniform(8.5, 11) * t + rng.uniform(0, 6.3)) * mod * rng.uniform(8, 18)
    x += alpha[:, None].astype(np.float32) * alpha_w.astype(np.float32)
    return x


def ekg(rng, n: int) -> np.ndarray:
    rate = rng.uniform(55, 110) / 60
    train = pulse_train(rng, n, FS / rate, jitter=0.03)
    t = np.arange(int(0.5 * FS)) / FS
    tmpl = (np.exp(-((t - 0.05) / 0.012) ** 2) - 0.25 * np.exp(-((t - 0.075) / 0.01) ** 2)
            + 0.3 * np.exp(-((t - 0.3) / 0.05) ** 2))
    return np.convolve(train, tmpl)[:n] * rng.uniform(150, 450) + rng.normal(0, 8, n)


def pattern_amp(p: float) -> float:
    """Electrode amplitude of a pattern whose latent probability is p (Other: none)."""
    return 0.0 if p < 0.08 else min(1.0, p / 0.6)


def synth_recording(rec: Recording, rng, artefacts: bool = True) -> np.ndarray:
    n = rec.length_s * FS
    x = background(rng, n)
    base_amp = rng.uniform(220, 320)
    for g in rec.groups:
        lo = int((g.offsets[0] + 25 - rng.uniform(15, 20)) * FS)
        hi = int((g.offsets[-1] + 25 + rng.uniform(15, 20)) * FS)
        lo, hi = max(lo, 0), min(hi, n)
        for cls in range(5):
            add_pattern(x, rng, cls, base_amp * pattern_amp(g.latent[cls]), g.side, lo, hi)
    e = ekg(rng, n)
    x += (e[:, None] * rng.uniform(0.0, 0.05, 19)).astype(np.float32)
    x += rng.normal(0, 20, 19).astype(np.float32)  # electrode DC offsets
    out = np.empty((n, 20), dtype=np.float32)
    out[:, :19], out[:, 19] = x, e
    if artefacts:
        if rng.random() < 0.12:  # large movement artefacts on a few electrodes
            for _ in range(int(rng.integers(1, 4))):
                length = int(rng.uniform(0.3, 3) * FS)
                s = int(rng.integers(0, max(n - length, 1)))
                ch = rng.choice(19, int(rng.integers(1, 5)), replace=False)
                bump = np.sin(np.linspace(0, np.pi, length)) * rng.uniform(300, 3000) * rng.choice([-1, 1])
                out[s:s + length, ch] += bump[:len(out[s:s + length]), None].astype(np.float32)
        if rng.random() < 0.05:  # a flat (disconnected) electrode
            out[:, int(rng.integers(19))] = 0.0
        if rng.random() < 0.08:  # NaN stretches (all channels, as the recorder drops out)
            for _ in range(int(rng.integers(1, 3))):
                length = int(rng.uniform(1, 8) * FS)
                s = int(rng.integers(0, max(n - length, 1)))
                out[s:s + length] = np.nan
    return np.round(out, 2)


# --- spectrograms ------------------------------------------------------------------------------------
SPEC_BINS = np.arange(3, 103)  # rfft bins of a 1024-point FFT at 200 Hz: 0.59 .. 19.92 Hz
SPEC_FREQS = [float(np.floor(k * FS / 1024 * 100 + 0.5) / 100) for k in SPEC_BINS]  # half up, as Kaggle
SPEC_COLUMNS = [f"{chain}_{f}" for chain in CHAINS for f in SPEC_FREQS]
_CHAIN_PAIRS = [(EEG_COLUMNS.index(a), EEG_COLUMNS.index(b))
                for chain in CHAINS.values() for a, b in zip(chain[:-1], chain[1:])]
_HANN = np.hanning(2 * FS).astype(np.float32)


def spectrogram_frames(x: np.ndarray, first_second: int) -> tuple[int, np.ndarray]:
    """Power of each 2 s frame [2k, 2k+2) of the session that lies fully inside the recording placed
    at `first_second`: (first frame index, (frames, 400) float32), NaN where the EEG has NaN."""
    n_s = x.shape[0] // FS
    k0 = (first_second + 1) // 2
    k1 = (first_second + n_s) // 2
    if k1 <= k0:
        return k0, np.zeros((0, 400), np.float32)
    s0 = (2 * k0 - first_second) * FS
    seg = x[s0:s0 + (k1 - k0) * 2 * FS]
    a = np.array([p[0] for p in _CHAIN_PAIRS])
    b = np.array([p[1] for p in _CHAIN_PAIRS])
    bip = (seg[:, a] - seg[:, b]).T.reshape(16, k1 - k0, 2 * FS)  # (pairs, frames, 400)
    bip = bip - bip.mean(axis=-1, keepdims=True)  # per-frame mean removed: no DC leak into 0.59 Hz
    spec = np.abs(sfft.rfft(bip * _HANN, n=1024, axis=-1)[..., SPEC_BINS]) ** 2
    spec *= 2.0 / (FS * float((_HANN ** 2).sum()))  # one-sided PSD, uV^2/Hz
    spec = spec.reshape(4, 4, k1 - k0, 100).mean(axis=1)  # average the chain's 4 pairs
    return k0, np.round(spec.transpose(1, 0, 2).reshape(k1 - k0, 400), 2).astype(np.float32)


def _schema(columns, dtypes) -> pa.Schema:
    """Arrow schema with pandas metadata, as pandas writes it (the real files carry it too)."""
    empty = pd.DataFrame({c: np.zeros(0, d) for c, d in zip(columns, dtypes)})
    return pa.Schema.from_pandas(empty, preserve_index=False)


EEG_SCHEMA = _schema(EEG_COLUMNS, [np.float32] * 20)
SPEC_SCHEMA = _schema(["time", *SPEC_COLUMNS], [np.int16] + [np.float32] * 400)


def _write_parquet(path: Path, schema: pa.Schema, columns) -> None:
    """pyarrow directly (pandas' per-column overhead dominated); no dictionary: float noise has none."""
    table = pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=False, compression="zstd"))


def write_spectrogram(path: Path, n_rows: int, pieces) -> None:
    data = np.full((n_rows, 400), np.nan, dtype=np.float32)
    for k0, frames in pieces:
        data[k0:k0 + len(frames)] = frames[: max(n_rows - k0, 0)]
    time_col = (np.arange(n_rows) * 2 + 1).astype(np.int16)
    _write_parquet(path, SPEC_SCHEMA, [time_col, *np.ascontiguousarray(data.T)])


def write_eeg(path: Path, x: np.ndarray) -> None:
    _write_parquet(path, EEG_SCHEMA, list(np.ascontiguousarray(x.T)))


# --- the dataset ------------------------------------------------------------------------------------
def _unique_ids(rng, n: int, low: int, high: int) -> np.ndarray:
    return low + rng.choice(high - low, size=n, replace=False)


def existing_dataset(out_dir: Path) -> list:
    return [p for p in [*DATASET_FILES, *DATASET_DIRS] if (out_dir / p).exists()]


def clear_dataset(out_dir: Path) -> None:
    for name in DATASET_DIRS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in [*DATASET_FILES, *[p.name for p in out_dir.glob("train_folded*.csv")]]:
        (out_dir / name).unlink(missing_ok=True)


def generate_dataset(out_dir, seed: int = 0, n_patients: int = 100, n_test: int = 8, force: bool = False,
                     progress: bool = True) -> dict:
    """Write the whole competition layout under out_dir; returns counts and the time taken."""
    t0 = time.time()
    out_dir = Path(out_dir)
    if n_patients < 1:
        raise DataError(f"n_patients must be >= 1, got {n_patients}")
    found = existing_dataset(out_dir) if out_dir.exists() else []
    if found and not force:
        raise DataError(f"{out_dir}: already holds a dataset ({', '.join(found)}); pass --force to replace it")
    if found:
        clear_dataset(out_dir)
    for d in DATASET_DIRS:
        (out_dir / d).mkdir(parents=True, exist_ok=True)

    master = np.random.default_rng(seed)
    root = np.random.SeedSequence(seed)
    train_seq, test_seq = root.spawn(2)
    patients = [plan_patient(s) for s in train_seq.spawn(n_patients)]
    recs = [r for p in patients for r in p]
    n_rows = sum(len(g.offsets) for r in recs for g in r.groups)
    n_sessions = sum(p[-1].session + 1 for p in patients)
    eeg_ids = _unique_ids(master, len(recs) + n_test, 10**6, 2**32 - 1)
    spec_ids = _unique_ids(master, n_sessions + n_test, 10**5, 2**31 - 1)
    label_ids = _unique_ids(master, n_rows, 10**5, 2**32 - 1)
    patient_ids = _unique_ids(master, n_patients + n_test, 1, 65_536)

    rows, latent_rows, ri, si, ei = [], [], 0, 0, 0
    it = tqdm(list(enumerate(patients)), desc="synthetic patients", disable=not progress, leave=False)
    for pi, prec in it:
        sessions = {}
        for rec in prec:
            rec.eeg_id = int(eeg_ids[ei])
            ei += 1
            rng = np.random.default_rng(rec.seed)
            x = synth_recording(rec, rng)
            write_eeg(out_dir / "train_eegs" / f"{rec.eeg_id}.parquet", x)
            sessions.setdefault(rec.session, []).append((rec, spectrogram_frames(x, rec.start_in_session)))
        for recs_in, spec_id in zip(sessions.values(), spec_ids[si:si + len(sessions)]):
            sub = 0
            for rec, _ in recs_in:
                sub_eeg = 0
                for g in rec.groups:
                    cons = CLASSES[int(np.argmax(g.votes))]
                    for off in g.offsets:
                        lid = int(label_ids[ri])
                        ri += 1
                        rows.append((rec.eeg_id, sub_eeg, float(off), int(spec_id), sub,
                                     float(off + rec.start_in_session - 275), lid, int(patient_ids[pi]), cons,
                                     *[int(v) for v in g.votes]))
                        latent_rows.append((lid, rec.eeg_id, *g.latent))
                        sub_eeg += 1
                        sub += 1
            end = max(rec.start_in_session + rec.length_s for rec, _ in recs_in) + 275
            n_spec = max(300, (end + 1) // 2)
            write_spectrogram(out_dir / "train_spectrograms" / f"{int(spec_id)}.parquet", n_spec,
                              [fr for _, fr in recs_in])
        si += len(sessions)

    train = pd.DataFrame(rows, columns=TRAIN_COLUMNS)
    latent = pd.DataFrame(latent_rows, columns=["label_id", "eeg_id", *LABEL_COLS])
    test_summary = _write_test(out_dir, test_seq, eeg_ids[ei:], spec_ids[si:], patient_ids[n_patients:], n_test)
    for name, df in (("train.csv", train), ("synthetic_latent.csv", latent)):
        atomic_write_csv(out_dir / name, df)
    return dict(out_dir=str(out_dir), patients=n_patients, eegs=len(recs), rows=len(train),
                spectrograms=n_sessions, test_eegs=test_summary, seconds=round(time.time() - t0, 1))


def _write_test(out_dir: Path, seq, eeg_ids, spec_ids, patient_ids, n_test: int) -> int:
    """Test eegs of exactly 50 s (one pattern around the centre) with 10-minute spectrograms."""
    test_rows, latent_rows = [], []
    for j, s in enumerate(seq.spawn(n_test)):
        rng = np.random.default_rng(s)
        high = bool(rng.random() < HIGH_FRACTION)
        latent = draw_latent(rng, high)
        rec = Recording(50, [Group([0], latent, np.zeros(6, int), int(rng.integers(0, 2)))], s, high)
        x = synth_recording(rec, rng, artefacts=False)
        eid, sid = int(eeg_ids[j]), int(spec_ids[j])
        write_eeg(out_dir / "test_eegs" / f"{eid}.parquet", x)
        write_spectrogram(out_dir / "test_spectrograms" / f"{sid}.parquet", 300, [spectrogram_frames(x, 275)])
        test_rows.append((sid, eid, int(patient_ids[j])))
        latent_rows.append((eid, *latent))
    test = pd.DataFrame(test_rows, columns=["spectrogram_id", "eeg_id", "patient_id"])
    sub = pd.DataFrame({"eeg_id": test["eeg_id"], **{c: 1 / 6 for c in LABEL_COLS}})
    lat = pd.DataFrame(latent_rows, columns=["eeg_id", *LABEL_COLS])
    for name, df in (("test.csv", test), ("sample_submission.csv", sub), ("synthetic_test_latent.csv", lat)):
        atomic_write_csv(out_dir / name, df)
    return n_test


def oracle_kl(rows_df: pd.DataFrame, data_dir) -> float | None:
    """KL of predicting each row's latent class probabilities (synthetic data only: the best any
    model can score on these rows); None when <data_dir>/synthetic_latent.csv is absent."""
    path = Path(data_dir) / "synthetic_latent.csv"
    if not path.is_file():
        return None
    latent = read_csv_checked(path, required=("label_id", *LABEL_COLS), what="latent probabilities")
    if "label_id" not in rows_df.columns:
        raise MetricError("rows have no label_id column")
    lat = latent.set_index("label_id")[list(LABEL_COLS)]
    missing = ~rows_df["label_id"].isin(lat.index)
    if missing.any():
        raise DataError(f"{path}: {int(missing.sum())} row(s) have no latent probabilities "
                        f"(e.g. label_id {rows_df['label_id'][missing].iloc[0]}); regenerate the data")
    pred = lat.loc[rows_df["label_id"]].to_numpy(np.float64)
    return kl_divergence(votes_to_target(rows_df[list(LABEL_COLS)].to_numpy()), pred)

"""EDF+D and BDF (issue 19.4): a discontinuous EDF+ (and BDF+) written here byte by byte after the EDF+
specification is placed on its true time line (gaps are NaN, so the windows over them count them as
gap_s; the signal after a gap is never shifted), a 24-bit BDF written by edfio gives the parquet's
probabilities, and a FIF's acquisition skip (BAD_ACQ_SKIP) is a gap too."""
import datetime

import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly

from data import recording
from data.signal import EEG_COLUMNS, FS, LABEL_COLS, WINDOW
from inference import timeline

from conftest import CLINICAL, synthetic
from test_recording import score, write_parquet

SPIKE_S = 100.0  # a one-sample 400 uV spike on Fp1 at this true time (after the gap)



def _field(value, width: int) -> bytes:
    text = str(value).encode("ascii")
    assert len(text) <= width, (value, width)
    return text.ljust(width)


def _tal(onset: float, text: str = "", duration: float | None = None) -> bytes:
    timing = f"{onset:+g}" + (f"\x15{duration:g}" if duration is not None else "")
    return f"{timing}\x14{text}\x14".encode() + b"\x00"


def write_edf_plus(path, x, labels, sfreq, onsets, annotations=(), bdf: bool = False, discontinuous: bool = True,
                   phys: float = 1000.0) -> None:
    """An EDF+ (or BDF+) file of 1 s data records, record r holding x[r * sfreq:(r + 1) * sfreq] and starting
    `onsets[r]` s after the file's start; header "EDF+D" (or "+C"); the 'EDF Annotations' signal holds each
    record's time-keeping TAL and, in the record they start in, the (onset, duration, text) annotations.
    Samples: digital = round(x / phys * dmax), physical range -phys..phys."""
    spr = int(sfreq)
    n_rec = len(onsets)
    assert len(x) == n_rec * spr
    dmax = 8388607 if bdf else 32767
    bps = 3 if bdf else 2
    tal_bytes = 120
    ns = len(labels) + 1
    head = (b"\xffBIOSEMI" if bdf else _field("0", 8)) + _field("X X X X", 80) \
        + _field("Startdate 02-JAN-2020 X X X", 80) + _field("02.01.20", 8) + _field("03.04.05", 8) \
        + _field(256 * (ns + 1), 8) + _field(("BDF+" if bdf else "EDF+") + ("D" if discontinuous else "C"), 44) \
        + _field(n_rec, 8) + _field(1, 8) + _field(ns, 4)
    names = [*labels, "BDF Annotations" if bdf else "EDF Annotations"]
    fields = [[_field(n, 16) for n in names], [_field("", 80)] * ns, [_field("uV", 8)] * (ns - 1) + [_field("", 8)],
              [_field(f"{-phys:g}", 8)] * (ns - 1) + [_field(-1, 8)], [_field(f"{phys:g}", 8)] * (ns - 1) + [_field(1, 8)],
              [_field(-dmax, 8)] * (ns - 1) + [_field(-dmax - 1, 8)], [_field(dmax, 8)] * ns, [_field("", 80)] * ns,
              [_field(spr, 8)] * (ns - 1) + [_field(tal_bytes // bps, 8)], [_field("", 32)] * ns]
    head += b"".join(b"".join(f) for f in fields)
    assert len(head) == 256 * (ns + 1)
    digital = np.round(np.asarray(x, np.float64) / phys * dmax).astype(np.int64)
    body = []
    for r in range(n_rec):
        for c in range(len(labels)):
            d = digital[r * spr:(r + 1) * spr, c]
            if bdf:
                u = (d & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
                body.append(u.tobytes())
            else:
                body.append(d.astype("<i2").tobytes())
        tal = _tal(onsets[r]) + b"".join(_tal(o, t, dur) for o, dur, t in annotations
                                         if onsets[r] <= o < onsets[r] + 1)
        assert len(tal) <= tal_bytes
        body.append(tal.ljust(tal_bytes, b"\x00"))
    with open(path, "wb") as fh:
        fh.write(head + b"".join(body))


def gapped_recording(sfreq: int):
    """60 records, a 30 s gap, 60 records: (signal written back to back, record onsets, the same signal on
    its true time line with NaN in the gap); a spike at SPIKE_S (true time)."""
    x = synthetic(150, seed=11).astype(np.float64)[:, :19]
    if sfreq != FS:
        x = resample_poly(x, 32, 25, axis=0)
    x = np.clip(x, -300, 300)
    true = x.copy()
    true[60 * sfreq:90 * sfreq] = np.nan
    true[int(SPIKE_S * sfreq), 0] = 400.0
    onsets = np.r_[np.arange(60), np.arange(90, 150)].astype(float)
    written = np.concatenate([true[:60 * sfreq], true[90 * sfreq:]])
    return written, onsets, true


@pytest.mark.parametrize("fmt", ["edf", "bdf"])
def test_discontinuous_edf_plus_lands_each_sample_at_its_true_time(fmt, tmp_path):
    """MNE reads an EDF+D's records back to back (its spike would come 30 s early); the reader places them
    at their time stamps: the spike at 100 s, the gap NaN, the rest equal to the signal within the
    format's step; the file's annotations at their true times too."""
    import edfio
    import mne

    written, onsets, true = gapped_recording(FS)
    f = tmp_path / f"gapped.{fmt}"
    marks = [(20.0, None, "before the gap"), (SPIKE_S, 0.5, "spike here"), (120.25, 3.0, "after")]
    write_edf_plus(f, written, CLINICAL, FS, onsets, marks, bdf=fmt == "bdf")
    reader = edfio.read_bdf if fmt == "bdf" else edfio.read_edf
    assert not reader(f).is_continuous  # another reader agrees the file is discontinuous
    raw = mne.io.read_raw(f, verbose="error")
    assert raw.n_times == 120 * FS and np.argmax(raw.get_data(picks=[0])[0]) == (SPIKE_S - 30) * FS  # shifted

    rec = recording.open_recording(f)
    assert rec.n_samples == 150 * FS and "EDF+D: 120 records in 2 piece(s), 1 gap(s) of 30 s in all" in rec.describe()
    got = rec.read(0, rec.n_samples)
    assert np.nanargmax(got[:, 0]) == SPIKE_S * FS
    gap = np.zeros(len(got), bool)
    gap[60 * FS:90 * FS] = True
    assert np.isnan(got[gap]).all() and np.isfinite(got[~gap][:, :19]).all()
    step = 1000.0 / (8388607 if fmt == "bdf" else 32767)
    np.testing.assert_allclose(got[~gap][:, :19], true[~gap], rtol=0, atol=step / 2 + 1e-4)
    ann = rec.annotations()
    assert ann["description"].tolist() == ["before the gap", "spike here", "after"]
    np.testing.assert_allclose(ann["onset"], [20.0, SPIKE_S, 120.25])
    np.testing.assert_allclose(ann["duration"], [0.0, 0.5, 3.0])


def test_edf_plus_d_at_256_hz_is_resampled_without_shift(tmp_path):
    x256, onsets, true = gapped_recording(256)
    f = tmp_path / "gapped256.edf"
    write_edf_plus(f, x256, CLINICAL, 256, onsets)
    rec = recording.open_recording(f)
    got = rec.read(0, rec.n_samples)
    assert rec.n_samples == 150 * FS
    around = got[int(SPIKE_S - 1) * FS:int(SPIKE_S + 1) * FS, 0]
    assert np.argmax(around) + int(SPIKE_S - 1) * FS == SPIKE_S * FS  # the spike's peak: at 100 s, 200 Hz sample 20000
    nan_rows = np.isnan(got[:, 0])
    assert nan_rows[60 * FS:90 * FS].all() and nan_rows.sum() < 30 * FS + 2 * FS  # the gap, widened by the filter


def test_gaps_of_an_edf_plus_d_are_the_windows_gap_seconds(small_ensemble, tmp_path):
    """Scored end to end: each window's gap_s is its overlap with the 30 s gap, computed here from the
    record onsets alone."""
    written, onsets, _ = gapped_recording(FS)
    f = tmp_path / "gapped_scored.edf"
    write_edf_plus(f, written, CLINICAL, FS, onsets)
    table = score([f], small_ensemble, tmp_path)[f.name]
    starts = timeline.window_starts(150 * FS, 10) / FS
    assert table["start_s"].tolist() == starts.tolist()
    expected = [max(0.0, min(s + WINDOW / FS, 90) - max(s, 60)) for s in starts]
    np.testing.assert_allclose(table["gap_s"], expected)
    assert table["gap_s"].max() == 30


def test_24_bit_bdf_gives_the_parquet_probabilities(small_ensemble, tmp_path):
    """A BDF written by edfio (24-bit samples, physical range each channel's min..max): decoded within half
    a step (range / 2^24, under 1e-4 uV here) of the signal, and scored as the 200 Hz parquet."""
    import edfio

    x = synthetic(60, seed=12)
    bdf, parquet = tmp_path / "rec24.bdf", tmp_path / "rec200.parquet"
    labels = [*CLINICAL, "ECG"]
    edfio.Bdf([edfio.BdfSignal(x[:, i].astype(np.float64), FS, label=lab, physical_dimension="uV")
               for i, lab in enumerate(labels)]).write(bdf)
    write_parquet(parquet, x)
    step = (x.max(axis=0) - x.min(axis=0)) / (2 ** 24 - 1)
    assert step[:19].max() < 1e-4
    rec = recording.open_recording(bdf)
    assert rec.source.kind == "BDF"
    got = rec.read(0, len(x))
    assert np.all(np.abs(got - x) <= step / 2 + 3e-5)  # + float32 rounding of values up to ~400 uV
    tables = score([bdf, parquet], small_ensemble, tmp_path)
    np.testing.assert_allclose(tables[bdf.name][LABEL_COLS].to_numpy(), tables[parquet.name][LABEL_COLS].to_numpy(),
                               rtol=0, atol=1e-6)


def test_a_fif_acquisition_skip_is_a_gap(tmp_path):
    """MNE marks a FIF's acquisition skips BAD_ACQ_SKIP (and gives zeros there): the reader makes them NaN;
    a clinician's own BAD_ mark is not a gap. The FIF starts 5 s after its measurement began (first_samp)."""
    import mne

    x = synthetic(40, seed=13).astype(np.float64)
    raw = mne.io.RawArray(x[:, :19].T * 1e-6, mne.create_info(EEG_COLUMNS[:19], float(FS), "eeg"), verbose="error")
    raw.set_meas_date(datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
    raw = raw.crop(5.0, None)
    raw.set_annotations(mne.Annotations([raw.first_time + 10, raw.first_time + 20], [4.0, 2.0],
                                        ["BAD_ACQ_SKIP", "BAD_movement"], orig_time=raw.info["meas_date"]))
    f = tmp_path / "skip_raw.fif"
    raw.save(f, verbose="error")
    rec = recording.open_recording(f)
    got = rec.read(0, rec.n_samples)
    nan_rows = np.isnan(got[:, 0])
    assert nan_rows[10 * FS:14 * FS].all() and nan_rows.sum() == 4 * FS
    np.testing.assert_allclose(got[~nan_rows][:, :19], np.delete(x[5 * FS:, :19], np.s_[10 * FS:14 * FS], axis=0),
                               atol=1e-4)
    assert "1 acquisition skip(s) of 4 s in all" in rec.describe()
    assert pd.Series(rec.annotations()["onset"]).tolist() == pytest.approx([10.0, 20.0])

"""Your own recordings (--recording): real EDF/FIF files written here and read back through MNE, channel
names mapped, rates resampled, long recordings streamed window by window, clear one-line errors."""
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly

from data import recording
from data.signal import EEG_COLUMNS, FS, LABEL_COLS, MONTAGE_ELECTRODES, WINDOW
from inference import blend, timeline
from utils.io import DataError, run_cli

from conftest import CLINICAL, make_run, synthetic, write_edf
from inference import recordings
from scripts import predict

ROOT = Path(__file__).resolve().parents[1]
ELECTRODES = EEG_COLUMNS[:19]


def write_parquet(path, x) -> None:
    pd.DataFrame(x, columns=EEG_COLUMNS).to_parquet(path, index=False)


def edf_step(x) -> np.ndarray:
    """EDF's quantisation step per channel (uV): 16 bits span the physical range."""
    return (x.max(axis=0) - x.min(axis=0)) / 65535


@pytest.fixture
def ensemble(tmp_path):
    """Two configs (the 2D cfg_5a with two runs, the 1D cfg_2a with one) and a blend."""
    out = tmp_path / "out"
    make_run(out, "cfg_5a", 0, 1), make_run(out, "cfg_5a", -1, 2), make_run(out, "cfg_2a", 1, 3)
    blend.save_blend(out / blend.BLEND_FILE, ["cfg_5a", "cfg_2a"], [0.7, 0.4], [0.1, -0.2, 0.0, 0.3, -0.1, 0.05], {})
    return out



def score(files, output_dir, tmp_path, *extra) -> dict:
    """predict.py --recording as a user runs it; {file name: window table read back from its csv}."""
    pred = tmp_path / "pred"
    args = ["--recording", *map(str, files), "--output-dir", str(output_dir), "--out-dir", str(pred),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--num-workers", "0", *extra]
    assert run_cli(predict.main, args) == 0
    tables = {}
    for f in files:
        name = recordings.output_name(f)
        assert (pred / f"{name}_timeline.png").stat().st_size > 10_000
        tables[f.name] = pd.read_csv(pred / f"{name}_windows.csv")
    return tables


# --- channel names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("label, name", [
    ("EEG FP1-REF", "Fp1"), ("fp1", "Fp1"), ("Fp1-LE", "Fp1"), ("FP1-AVG", "Fp1"), ("EEG Fp1-A1", "Fp1"),
    ("EEG_C3_REF", "C3"), ("POL O2", "O2"), ("T7", "T3"), ("EEG T8-REF", "T4"), ("p7", "T5"), ("P8-LE", "T6"),
    ("EEG Fz-Ref", "Fz"), ("ECG", "EKG"), ("Fp1-F7", None), ("A1", None), ("EEG", None), ("Photic", None)])
def test_channel_label_variants(label, name):
    assert recording.electrode_name(label) == name


def test_channel_map_prefers_the_exact_name_and_rejects_ambiguity():
    labels = ["EEG FP1-REF", "Fp1", *CLINICAL[1:]]
    assert recording.match_channels(labels).index["Fp1"] == 1  # "Fp1" itself beats "EEG FP1-REF"
    with pytest.raises(DataError, match=r"'EEG T3-REF', 'T7-LE' all read as electrode T3"):
        recording.match_channels([*CLINICAL, "T7-LE"])


def test_missing_electrode_is_a_one_line_error_unless_allowed():
    labels = [lab for lab in CLINICAL if "O2" not in lab]
    with pytest.raises(DataError) as err:
        recording.match_channels(labels, "rec.edf")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("rec.edf: electrode(s) O2 not found")
    assert "--allow-missing" in msg and "the file has: EEG FP1-REF, EEG F3-REF" in msg
    assert recording.match_channels(labels, allow_missing=True).missing == ["O2"]


# --- resampling -----------------------------------------------------------------------------------------
def test_window_placement_gaps_and_time_shares():
    assert timeline.window_starts(1800 * FS, 10).tolist() == list(range(0, 1751 * FS, 10 * FS))
    assert timeline.window_starts(95 * FS, 10).tolist() == [s * FS for s in (0, 10, 20, 30, 40, 45)]
    assert timeline.window_starts(32 * FS, 10).tolist() == [0]
    rng = np.random.default_rng(0)
    rec = rng.normal(size=(123_457, 20)).astype(np.float32)
    for a, n in ((5_000, 20_000), (60_000, 1), (100_000, 30_000)):
        rec[a:a + n] = np.nan
    rec[70_000:80_000, :3] = np.nan  # some electrodes only: not a gap
    starts = timeline.window_starts(len(rec), 7.3)
    flags = np.r_[np.isnan(rec[:, MONTAGE_ELECTRODES]).all(axis=1), np.ones(WINDOW, bool)]
    expected = [flags[s:s + WINDOW].sum() / FS for s in starts]
    np.testing.assert_array_equal(timeline.gap_seconds(rec, starts, chunk=9_999), expected)
    table = timeline.window_table(np.array([0, 2000, 4000]), np.eye(6)[[0, 5, 5]])
    assert table["top_class"].tolist() == ["Seizure", "Other", "Other"]
    shares = timeline.time_shares(table, 70)  # cells 20-30, 30-40, 40-50 s
    assert shares == pytest.approx({"Seizure": 1 / 3, "Other": 2 / 3})


@pytest.mark.parametrize("sfreq", [256, 500, 512, 250, 1000, 199.8, 200])
def test_chunked_resampling_equals_resampling_the_whole_signal(sfreq):
    rng = np.random.default_rng(0)
    n = int(sfreq * 41) + 7
    x = rng.normal(size=(n, 3))
    x[300:340, 1] = np.nan  # a gap stays a (slightly wider) gap, as in the whole-signal result
    src = recording.Source(Path("x"), "test", ["a", "b", "c"], float(sfreq), n, lambda p, s, e: x[s:e][:, p])
    up, down = recording.rate_ratio(sfreq)
    whole = resample_poly(x, up, down, axis=0)
    assert recording.resampled_length(n, up, down) == len(whole)
    cuts = np.unique(np.r_[0, rng.integers(1, len(whole), 12), len(whole)])
    got = np.concatenate([recording.read_resampled(src, [0, 1, 2], a, b) for a, b in zip(cuts[:-1], cuts[1:])])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(whole))
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-12)


# --- the same probabilities whatever the file format ------------------------------------------------------
def test_real_example_as_edf_gives_the_parquet_probabilities(shared_sample, ensemble, tmp_path, monkeypatch):
    """EDF holds 16-bit integers: with the physical range at each channel's min..max the step is
    (max - min) / 65535 (here < 0.007 uV), each sample off by at most half of it. The model input
    (band-passed bipolar uV / 32) then moves by < 1e-3 and the probabilities by < 1e-4 (measured:
    about 1e-6)."""
    monkeypatch.setenv("HMS_CACHE_DIR", str(tmp_path / "kaggle_cache"))
    parquet = shared_sample / "test_eegs" / "3911565283.parquet"
    x = pd.read_parquet(parquet)[EEG_COLUMNS].to_numpy(np.float32)
    edf = tmp_path / "example.edf"
    write_edf(edf, x, [*CLINICAL, "ECG"], FS)
    step = edf_step(x)
    assert step[:19].max() < 0.007  # EEG channels (the EKG, unused by the models, spans more)
    decoded = recording.open_recording(edf).read(0, len(x))
    assert np.all(np.abs(decoded - x) <= step / 2 + 1e-4)  # + float32 rounding of values up to ~400 uV

    sub_path = tmp_path / "sub.csv"
    assert run_cli(predict.main, ["--data-dir", str(shared_sample), "--output-dir", str(ensemble), "--out",
                                  str(sub_path), "--num-workers", "0"]) == 0
    kaggle = pd.read_csv(sub_path)[LABEL_COLS].to_numpy()
    tables = score([edf, parquet], ensemble, tmp_path, "--batch-size", "1")  # as Kaggle's: alone (mdl_4's top_db)
    as_edf, as_parquet = (tables[n][LABEL_COLS].to_numpy() for n in (edf.name, parquet.name))
    assert len(as_edf) == len(as_parquet) == 1  # exactly 50 s: one window
    np.testing.assert_allclose(as_parquet, kaggle, atol=1e-9)  # the same file through --recording: same numbers
    np.testing.assert_allclose(as_edf, kaggle, atol=1e-4)


def test_256_and_500_hz_edf_and_mne_written_files_match_the_200_hz_recording(small_ensemble, tmp_path):
    """A synthetic 200 Hz recording, upsampled to 256 and 500 Hz (EDF, 16-bit) and 500 Hz FIF,
    BrainVision and EEGLAB files written by MNE (modern T7/T8/P7/P8 names), and resampled back to
    200 Hz by the reader: windows within 2e-3 of the 200 Hz parquet's (what is left is the two
    polyphase filters' passband ripple and the formats' precision)."""
    import mne

    x = synthetic(95, seed=3)
    files = [tmp_path / "rec200.parquet", tmp_path / "rec256.edf", tmp_path / "rec500.edf", tmp_path / "rec500_raw.fif",
             tmp_path / "rec500bv.vhdr", tmp_path / "rec500lab.set"]
    write_parquet(files[0], x)
    up256 = resample_poly(x.astype(np.float64), 32, 25, axis=0)
    up500 = resample_poly(x.astype(np.float64), 5, 2, axis=0)
    write_edf(files[1], up256, [*CLINICAL, "EKG"], 256)
    write_edf(files[2], up500, [f"{e}-LE" for e in ELECTRODES] + ["ECG"], 500)
    modern = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
    info = mne.create_info([modern.get(e, e) for e in ELECTRODES], 500.0, "eeg")
    raw = mne.io.RawArray(up500[:, :19].T * 1e-6, info, verbose="error")
    raw.save(files[3], verbose="error")
    mne.export.export_raw(files[4], raw, verbose="error")  # through pybv (a test requirement)
    mne.export.export_raw(files[5], raw, verbose="error")  # through eeglabio (a test requirement)

    for f in files[1:]:  # the signal itself: within the filters' ripple of the original, edges aside
        back = recording.open_recording(f).read(0, len(x))[FS:-FS, :19]
        assert np.abs(back - x[FS:-FS, :19]).max() < 0.5, f  # uV, on a signal of ~25 uV std
    tables = score(files, small_ensemble, tmp_path, "--num-workers", "2")  # the store travels to workers
    ref = tables["rec200.parquet"]
    assert ref["start_s"].tolist() == [0, 10, 20, 30, 40, 45]  # the last window ends at the recording's end
    for f in files[1:]:
        got = tables[f.name]
        assert got["start_s"].tolist() == ref["start_s"].tolist()
        np.testing.assert_allclose(got[LABEL_COLS].to_numpy(), ref[LABEL_COLS].to_numpy(), atol=2e-3)


# --- the recording cache key ---------------------------------------------------------------------------
def mne_files(tmp_path, x):
    """The 200 Hz signal `x` as BrainVision (.vhdr + .vmrk + .eeg, float32) and as EEGLAB with its data in
    a separate .fdt (MNE's export embeds it in the .set, so the .set is rewritten to point at the .fdt)."""
    import mne
    import scipy.io

    raw = mne.io.RawArray(x[:, :19].T.astype(np.float64) * 1e-6, mne.create_info(ELECTRODES, float(FS), "eeg"),
                          verbose="error")
    vhdr, embedded, lab = tmp_path / "bv.vhdr", tmp_path / "embedded.set", tmp_path / "lab.set"
    mne.export.export_raw(vhdr, raw, verbose="error")
    mne.export.export_raw(embedded, raw, verbose="error")
    fields = {k: v for k, v in scipy.io.loadmat(embedded, appendmat=False).items() if not k.startswith("__")}
    np.asarray(fields["data"], np.float32).T.tofile(tmp_path / "lab.fdt")  # sample after sample
    fields["data"] = "lab.fdt"
    scipy.io.savemat(lab, fields, appendmat=False)
    return {vhdr: tmp_path / "bv.eeg", lab: tmp_path / "lab.fdt"}


def edit_data_file(path) -> None:
    """Double every sample of a float32 data file in place: same size, same header, a new mtime."""
    before = path.stat().st_mtime_ns
    data = np.fromfile(path, np.float32)
    (data * 2).tofile(path)
    if path.stat().st_mtime_ns == before:  # a coarse-clock filesystem: the edit still gets its own mtime
        os.utime(path, ns=(before + 10**9, before + 10**9))


def test_cache_decodes_again_when_only_the_data_file_changes(tmp_path):
    """BrainVision .eeg and EEGLAB .fdt: the cache key covers the data file, not only the header, so an
    edited data file (header untouched) is decoded again and the new signal served; an untouched one is reused."""
    x = synthetic(30, seed=5)
    cache = tmp_path / "cache"
    for header, data_file in mne_files(tmp_path, x).items():
        rec = recording.open_recording(header)
        assert data_file in rec.source.files and header == rec.source.files[0]
        if header.suffix == ".vhdr":
            assert tmp_path / "bv.vmrk" in rec.source.files
        store = recording.RecordingStore([rec], cache)
        first = np.array(store.recording(0))
        np.testing.assert_allclose(first[:, :19], x[:, :19], atol=1e-3)
        path = store.cache_path(0)
        assert recording.RecordingStore([recording.open_recording(header)], cache).cache_path(0) == path  # reused

        header_stat = header.stat()
        edit_data_file(data_file)
        assert header.stat().st_mtime_ns == header_stat.st_mtime_ns and header.stat().st_size == header_stat.st_size
        again = recording.RecordingStore([recording.open_recording(header)], cache)  # the next run on the file
        assert again.cache_path(0) != path
        np.testing.assert_allclose(np.array(again.recording(0))[:, :19], 2 * x[:, :19], atol=2e-3)
        assert not path.exists()  # the stale copy is removed
        assert [p.name for p in cache.glob(f"{header.name}_*.npy")] == [again.cache_path(0).name]


def test_cache_key_covers_each_fif_part_and_the_decoding_version(tmp_path, monkeypatch):
    import mne

    x = synthetic(60, seed=6)
    raw = mne.io.RawArray(np.repeat(x[:, :19].T.astype(np.float64), 40, axis=0) * 1e-6,  # 760 channels: 2 parts
                          mne.create_info([f"{e}-{i}" if i else e for i in range(40) for e in ELECTRODES], float(FS),
                                          "eeg"), verbose="error")
    fif = tmp_path / "split_raw.fif"
    raw.save(fif, split_size="20MB", verbose="error")
    rec = recording.open_recording(fif)
    parts = rec.source.files
    assert len(parts) == 2 and parts[0] == fif, parts
    store = recording.RecordingStore([rec], tmp_path / "cache")
    key = store.cache_path(0)
    os.utime(parts[1], ns=(parts[1].stat().st_atime_ns, parts[1].stat().st_mtime_ns + 10**9))  # the 2nd part edited
    assert store.cache_path(0) != key
    key = store.cache_path(0)
    monkeypatch.setattr(recording, "DECODE_VERSION", recording.DECODE_VERSION + "-next")
    assert store.cache_path(0) != key  # new decoding code: decoded again


# --- long, short, broken --------------------------------------------------------------------------------
def test_thirty_minutes_of_256_hz_edf_stream_in_bounded_memory(small_ensemble, tmp_path, capsys):
    """(1800 - 50) / 10 + 1 = 176 windows. Holding them all would take 176 x 10,000 x 20 x 4 B = 141 MB,
    the decoded recording 29 MB, the EDF's samples as MNE's float64 70 MB. Streamed, the traced
    (numpy + Python) peak of a warm run is the same for 2 and for 30 minutes (measured 11 MB both):
    bounds 20 MB, and at most 5 MB more than the 2-minute recording's."""
    edfs = {}
    for minutes in (2, 30):
        edfs[minutes] = tmp_path / f"rec{minutes}min.edf"
        up = resample_poly(synthetic(60 * minutes, seed=5).astype(np.float64), 32, 25, axis=0)
        write_edf(edfs[minutes], up, [*CLINICAL, "EKG"], 256)
    del up
    score([edfs[2]], small_ensemble, tmp_path)  # warm-up: imports, caches and the allocator's first growth
    peaks = {}
    tracemalloc.start()
    try:
        for minutes, edf in edfs.items():
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            tables = score([edf], small_ensemble, tmp_path, "--batch-size", "8")
            peaks[minutes] = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    table = tables[edfs[30].name]
    assert len(table) == (1800 - 50) // 10 + 1 == 176
    assert table["start_s"].iloc[-1] == 1750 and table["center_s"].iloc[0] == 25 and (table["gap_s"] == 0).all()
    np.testing.assert_allclose(table[LABEL_COLS].sum(axis=1), 1, atol=1e-9)
    assert peaks[30] < 20e6 and peaks[30] < peaks[2] + 5e6, f"traced peaks (bytes): {peaks}"
    out = capsys.readouterr().out
    assert "rec30min.edf: 00:30:00 (1800 s), 176 window(s); top class by time:" in out


def test_short_recording_is_one_padded_window_with_a_warning(small_ensemble, tmp_path, capsys):
    f = tmp_path / "short.parquet"
    x = synthetic(32, seed=1)
    x[10 * FS:12 * FS] = np.nan  # a 2 s drop-out
    write_parquet(f, x)
    table = score([f], small_ensemble, tmp_path)[f.name]
    assert len(table) == 1 and table["start_s"].iloc[0] == 0
    assert table["gap_s"].iloc[0] == 18 + 2  # seconds the window is scored on zeros
    err = capsys.readouterr().err
    assert "warning: short.parquet: 32.0 s long, shorter than the 50 s window: scored as one window zero-padded " \
           "by 18.0 s" in err


def test_allow_missing_scores_with_a_warning(small_ensemble, tmp_path, capsys):
    x = synthetic(60, seed=2)
    keep = [i for i, e in enumerate(EEG_COLUMNS) if e not in ("O2", "EKG")]
    edf = tmp_path / "no_o2.edf"
    write_edf(edf, x[:, keep], [CLINICAL[i] for i in keep], FS)
    args = ["--recording", str(edf), "--output-dir", str(small_ensemble), "--out-dir", str(tmp_path / "p"),
            "--cache-dir", str(tmp_path / "c"), "--num-workers", "0"]
    assert run_cli(predict.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "electrode(s) O2 not found" in err and "EEG FP1-REF" in err
    table = score([edf], small_ensemble, tmp_path, "--allow-missing")[edf.name]
    assert len(table) == 2
    assert "warning: no_o2.edf: electrode(s) O2 missing: the bipolar channels using them are zeros" in \
        capsys.readouterr().err
    decoded = recording.open_recording(edf, allow_missing=True).read(0, 100)
    assert np.isnan(decoded[:, EEG_COLUMNS.index("O2")]).all()  # -> T6-O2, P4-O2 zero after the montage


def test_unknown_units_are_scored_with_a_warning(small_ensemble, tmp_path, capsys):
    """An EDF whose channels carry no unit: MNE takes the numbers as volts, so microvolt data comes
    out a million times too large; the amplitude check says so (and stays quiet for real units)."""
    x = synthetic(60, seed=6)
    odd, fine = tmp_path / "no_unit.edf", tmp_path / "fine.edf"
    write_edf(odd, x[:, :19], CLINICAL, FS, unit="")
    write_edf(fine, x[:, :19], CLINICAL, FS)
    score([odd, fine], small_ensemble, tmp_path)
    err = capsys.readouterr().err
    assert "warning: no_unit.edf: typical amplitude" in err and "check the file's units" in err
    assert "fine.edf: typical" not in err


def test_bad_inputs_are_one_line_errors(small_ensemble, tmp_path, capsys):
    nan_only = tmp_path / "nan.parquet"
    write_parquet(nan_only, np.full((12_000, 20), np.nan, np.float32))
    (tmp_path / "notes.txt").write_text("x")
    cases = {tmp_path / "absent.edf": "absent.edf: recording not found",
             tmp_path / "notes.txt": "notes.txt: unsupported file type '.txt'; supported: .edf, .bdf, .vhdr",
             nan_only: "nan.parquet: recording is NaN throughout (no signal)"}
    (tmp_path / "broken.edf").write_bytes(b"0" * 300)
    cases[tmp_path / "broken.edf"] = "broken.edf: cannot read as EDF/EDF+"
    for f, msg in cases.items():
        rc = run_cli(predict.main, ["--recording", str(f), "--output-dir", str(small_ensemble), "--out-dir",
                                    str(tmp_path / "p"), "--cache-dir", str(tmp_path / "c"), "--num-workers", "0"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and err.count("\n") == 0, err
    assert not (tmp_path / "p").exists()
    assert not list((tmp_path / "c").glob("*.npy"))  # a failed decode leaves no cache file


def test_demo_trained_ensemble_ranks_the_window_centred_on_a_pattern_first(tmp_path):
    """The CPU demo (two configs, fold 0, 40 synthetic patients; about a minute) trains an ensemble; a
    5-minute 256 Hz EDF of background with generalised periodic discharges (the synthetic generator's
    GPD) over 135-175 s: the window centred on them (start 130 s) scores GPD above every window that
    does not touch them."""
    import subprocess
    import sys

    from data.synthetic import GPD, add_pattern

    work = tmp_path / "demo"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--work-dir", str(work), "--configs", "cfg_1", "cfg_2a",
           "--folds", "0", "--n-patients", "40", "--n-test", "1", "--blend-epochs", "50", "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out,) = work.glob("run_*")
    x = synthetic(300, seed=7)
    rng = np.random.default_rng(7)
    add_pattern(x[:, :19], rng, GPD, 280.0, 0, 135 * FS, 175 * FS)
    edf = tmp_path / "gpd.edf"
    write_edf(edf, resample_poly(x.astype(np.float64), 32, 25, axis=0), [*CLINICAL, "EKG"], 256)
    table = score([edf], out, tmp_path)[edf.name]
    gpd = table.set_index("start_s")["gpd_vote"]
    untouched = gpd[(gpd.index + 50 <= 135) | (gpd.index >= 175)]
    assert len(untouched) == 17  # starts 0-80 s and 180-250 s
    assert gpd[130] > untouched.max(), gpd.round(3).to_dict()

"""Events and annotations (issue 19.5, 19.6): runs of windows of a harmful pattern become events, written as
BIDS events (<name>_events.tsv) and MNE's CSV annotations (<name>_annotations.csv, loaded by
mne.read_annotations and placed on the recording by MNE); the file's own annotations (EDF+, BrainVision,
FIF, EEGLAB, written by edfio, pybv, MNE and eeglabio) are read through MNE, written to
<name>_file_annotations.tsv and drawn as a lane whose labels never overlap."""
import datetime

import numpy as np
import pandas as pd
import pytest

from data import recording
from data.signal import CLASSES, EEG_COLUMNS, FS, LABEL_COLS
from inference import timeline
from utils.io import run_cli

from conftest import CLINICAL, synthetic, write_edf
from test_recording import score

START = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
MARKS = pd.DataFrame({"onset": [5.0, 12.5, 31.25, 47.0], "duration": [0.0, 2.0, 1.0, 4.5],
                      "description": ["spike wave", "HV start", "photic 10 Hz", "eyes closed"]})



# --- events from windows ----------------------------------------------------------------------------------
def expected_events(table: pd.DataFrame, seconds: float, threshold=None) -> list:
    """The events written out plainly: for each harmful class, walk the windows; a window belongs when it is
    the top class (or reaches the threshold) and has under 10 s of gap; a run spans from its first window's
    cell start to its last's end, the cells being halfway between window centres (5 s past the first and
    last centre, within the recording)."""
    c = table["center_s"].tolist()
    out = []
    for k, cls in enumerate(CLASSES[:5]):
        run = []
        for i in range(len(table) + 1):
            on = False
            if i < len(table):
                p = table[LABEL_COLS].iloc[i].to_numpy()
                on = (p.argmax() == k or (threshold is not None and p[k] >= threshold)) and table["gap_s"].iloc[i] < 10
            if on:
                run.append(i)
            elif run:
                lo = max(c[0] - 5, 0) if run[0] == 0 else (c[run[0] - 1] + c[run[0]]) / 2
                last = run[-1]
                hi = min(c[-1] + 5, max(seconds, c[-1])) if last == len(c) - 1 else (c[last] + c[last + 1]) / 2
                ps = [table[LABEL_COLS[k]].iloc[j] for j in run]
                out.append((lo, hi - lo, cls, np.mean(ps), max(ps), len(run), table["start_s"].iloc[run[0]],
                            table["start_s"].iloc[last]))
                run = []
    return sorted(out, key=lambda e: (e[0], CLASSES.index(e[2])))


def same_events(ev: pd.DataFrame, want: list, atol: float = 1e-12) -> None:
    want = pd.DataFrame(want, columns=timeline.EVENT_COLUMNS)
    assert ev["trial_type"].tolist() == want["trial_type"].tolist()
    assert ev["n_windows"].tolist() == want["n_windows"].tolist()
    num = [c for c in timeline.EVENT_COLUMNS if c not in ("trial_type", "n_windows")]
    np.testing.assert_allclose(ev[num].to_numpy(np.float64), want[num].to_numpy(np.float64), rtol=0, atol=atol)


def test_windows_merge_into_events():
    """Windows 0-2 Seizure, 3 Other, 4-5 LPD, 6 Other with LPD at 0.4, 7 GPD on a 20 s gap, 8 GPD, 9 Other:
    top class alone gives Seizure 20-50 s, LPD 60-80 s, GPD 100-110 s; with a 0.35 threshold LPD runs to
    90 s (window 6); the gapped window 7 is in no event; stride 10 s, cells = the central 10 s."""
    probs = np.full((10, 6), 0.02)
    top = [0, 0, 0, 5, 1, 1, 5, 2, 2, 5]
    for i, k in enumerate(top):
        probs[i, k] = 0.9
    probs[6, 1], probs[6, 5] = 0.4, 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    starts = np.arange(10) * 10 * FS
    gaps = np.zeros(10)
    gaps[7] = 20
    table = timeline.window_table(starts, probs, gaps)
    seconds = 140.0
    ev = timeline.events(table, seconds)
    assert list(ev.columns) == timeline.EVENT_COLUMNS
    assert ev[["onset", "duration", "trial_type", "n_windows"]].values.tolist() == [
        [20.0, 30.0, "Seizure", 3], [60.0, 20.0, "LPD", 2], [100.0, 10.0, "GPD", 1]]
    assert ev["peak_probability"].iloc[0] == pytest.approx(probs[0, 0])
    got = timeline.events(table, seconds, threshold=0.35)
    assert got[["onset", "duration", "trial_type"]].values.tolist() == [
        [20.0, 30.0, "Seizure"], [60.0, 30.0, "LPD"], [100.0, 10.0, "GPD"]]
    assert got["mean_probability"].iloc[1] == pytest.approx(probs[[4, 5, 6], 1].mean())
    for thr in (None, 0.35, 0.01):
        same_events(timeline.events(table, seconds, thr), expected_events(table, seconds, thr))
    # stride 5 s: each window stands for the 5 s around its centre
    t5 = timeline.window_table(np.arange(4) * 5 * FS, np.eye(6)[[0, 0, 5, 0]], np.zeros(4))
    assert timeline.events(t5, 70)[["onset", "duration"]].values.tolist() == [[20.0, 12.5], [37.5, 7.5]]
    assert timeline.events(table.iloc[:0], seconds).empty


def write_clinical_edf(path, x, marks=MARKS) -> None:
    """An EDF+ with a start date and time and the clinician's annotations (edfio)."""
    import edfio

    signals = [edfio.EdfSignal(np.asarray(x[:, i], np.float64), sampling_frequency=FS, label=lab,
                               physical_dimension="uV") for i, lab in enumerate(CLINICAL)]
    edfio.Edf(signals, recording=edfio.Recording(startdate=START.date()), starttime=START.time().replace(tzinfo=None),
              annotations=[edfio.EdfAnnotation(o, d or None, t) for o, d, t in marks.itertuples(index=False)]
              ).write(path)


def test_events_are_written_as_bids_events_and_mne_annotations(small_ensemble, tmp_path):
    """Scored with the top class alone, then with a threshold at the median LPD probability (so LPD runs
    start and stop): both files hold the events computed here from the windows csv; the BIDS file is
    tab-separated with onset, duration first; the CSV loads with mne.read_annotations and MNE places it
    on the EDF it came from at the same onsets."""
    import mne

    x = synthetic(200, seed=21)[:, :19]
    edf = tmp_path / "clin.edf"
    write_clinical_edf(edf, x)
    pred = tmp_path / "pred"
    table = score([edf], small_ensemble, tmp_path)[edf.name]
    thr = float(table["lpd_vote"].median())
    for extra in ([], ["--event-threshold", f"{thr:.17g}"]):
        table = score([edf], small_ensemble, tmp_path, *extra)[edf.name]
        assert len(table) == 16
        text = (pred / "clin_events.tsv").read_text()
        assert text.splitlines()[0] == "\t".join(timeline.EVENT_COLUMNS)
        ev = pd.read_csv(pred / "clin_events.tsv", sep="\t")
        want = expected_events(table, 200.0, thr if extra else None)
        assert len(want) > 0
        same_events(ev, want, atol=1e-6)
        ann = mne.read_annotations(pred / "clin_annotations.csv")
        raw = mne.io.read_raw(edf, verbose="error")
        assert raw.info["meas_date"] == START
        raw.set_annotations(ann)
        placed = sorted(zip(np.round(raw.annotations.onset - raw.first_time, 6), np.round(raw.annotations.duration, 6),
                            raw.annotations.description))  # MNE orders events of one onset its own way
        assert placed == sorted(zip(np.round(ev["onset"], 6), np.round(ev["duration"], 6), ev["trial_type"]))
    assert (ev["trial_type"] == "LPD").sum() > 1  # the threshold made runs of LPD windows

    marks = pd.read_csv(pred / "clin_file_annotations.tsv", sep="\t")
    pd.testing.assert_frame_equal(marks, MARKS)


def test_event_threshold_outside_0_1_is_refused(small_ensemble, tmp_path, capsys):
    from scripts import predict

    x = synthetic(60, seed=3)[:, :19]
    edf = tmp_path / "thr.edf"
    write_edf(edf, x, CLINICAL, FS)
    rc = run_cli(predict.main, ["--recording", str(edf), "--output-dir", str(small_ensemble), "--event-threshold", "1.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: --event-threshold must be in (0, 1], got 1.5"


def test_recording_without_a_start_time_gets_mne_s_1970_origin(tmp_path):
    """Parquet has no start time: onsets count from 1970-01-01 00:00:00, as MNE writes orig_time None."""
    import mne

    from inference import recordings

    ev = pd.DataFrame({"onset": [25.0, 3725.5], "duration": [10.0, 20.0], "trial_type": ["LPD", "GRDA"]})
    f = tmp_path / "x_annotations.csv"
    recordings.write_mne_annotations(f, ev, None)
    assert f.read_text().splitlines() == ["onset,duration,description", "1970-01-01 00:00:25.000000,10.0,LPD",
                                          "1970-01-01 01:02:05.500000,20.0,GRDA"]
    ann = mne.read_annotations(f)
    recordings.write_mne_annotations(tmp_path / "none.csv", ev.iloc[:0], None)  # no event: the header alone
    assert (tmp_path / "none.csv").read_text() == "onset,duration,description\n"
    info = mne.create_info(["a"], float(FS), "eeg")
    raw = mne.io.RawArray(np.zeros((1, 4000 * FS)), info, verbose="error")
    raw.set_meas_date(0)
    raw.set_annotations(ann)
    np.testing.assert_allclose(raw.annotations.onset, [25.0, 3725.5])


# --- the file's own annotations ------------------------------------------------------------------------------
def test_file_annotations_of_each_format_are_read_written_and_drawn(small_ensemble, tmp_path):
    """The same four marks written by edfio (EDF+), pybv (BrainVision, through mne.export), MNE (FIF, cropped
    so that it starts 7 s into its measurement) and eeglabio (EEGLAB, through mne.export): read at the same
    onsets from each recording's first sample, written to <name>_file_annotations.tsv, drawn as a lane (the
    timeline grows by it)."""
    import mne
    from PIL import Image

    x = synthetic(67, seed=22)
    edf = tmp_path / "marks.edf"
    write_clinical_edf(edf, x[7 * FS:, :19])
    raw = mne.io.RawArray(x[:, :19].T * 1e-6, mne.create_info(EEG_COLUMNS[:19], float(FS), "eeg"), verbose="error")
    raw.set_meas_date(START)
    raw = raw.crop(7.0, None)
    raw.set_annotations(mne.Annotations(MARKS["onset"] + raw.first_time, MARKS["duration"], MARKS["description"],
                                        orig_time=START))
    fif, vhdr, eeglab = tmp_path / "marks_raw.fif", tmp_path / "marks_bv.vhdr", tmp_path / "marks_lab.set"
    raw.save(fif, verbose="error")
    mne.export.export_raw(vhdr, raw, verbose="error")
    mne.export.export_raw(eeglab, raw, verbose="error")
    plain = tmp_path / "plain.edf"
    write_edf(plain, x[:, :19], CLINICAL, FS)
    files = [edf, fif, vhdr, eeglab, plain]
    for f in files[:4]:
        got = recording.open_recording(f).annotations()
        np.testing.assert_allclose(got["onset"], MARKS["onset"], atol=1 / FS, err_msg=f.name)
        np.testing.assert_allclose(got["duration"], MARKS["duration"], atol=1 / FS, err_msg=f.name)
        prefix = "Comment/" if f == vhdr else ""
        assert got["description"].tolist() == [prefix + d for d in MARKS["description"]], f.name
    assert recording.open_recording(plain).annotations().empty
    score(files, small_ensemble, tmp_path)
    pred = tmp_path / "pred"
    for f in files:
        name = f.name.split(".")[0]
        written = pd.read_csv(pred / f"{name}_file_annotations.tsv", sep="\t")
        assert list(written.columns) == ["onset", "duration", "description"]
        assert len(written) == (0 if f == plain else 4)
        height = Image.open(pred / f"{name}_timeline.png").size[1]
        assert height == (900 if f == plain else 960), f.name


def hour_of_marks(seed: int = 0, n: int = 100) -> pd.DataFrame:
    """A clinical hour: 100 marks, half of them in two bursts (a run of spike-wave marks, hyperventilation
    and photic stimulation steps), some long descriptions."""
    rng = np.random.default_rng(seed)
    onset = np.r_[rng.uniform(0, 3600, n - 50), rng.uniform(600, 660, 30), rng.uniform(1800, 1900, 20)]
    desc = rng.choice(["spike wave", "eyes closed", "eyes open", "HV start", "photic stimulation 10 Hz",
                       "patient moved, nurse in the room, electrodes checked"], n, p=[.4, .2, .2, .05, .1, .05])
    duration = rng.choice([0.0, 0.0, 0.0, 30.0, 120.0], n)
    return pd.DataFrame({"onset": onset, "duration": duration, "description": desc}).sort_values("onset")


def lane_figure(ann, seconds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 0.5), dpi=100)
    ax = fig.add_axes([0.05, 0.05, 0.87, 0.9])
    ax.set_xlim(0, seconds)
    texts = timeline.draw_annotation_lane(ax, ann, seconds)
    return fig, ax, texts


def test_a_hundred_marks_in_an_hour_are_labelled_without_overlap():
    """Measured with matplotlib's renderer: no two labels' boxes overlap and each lies inside the lane;
    every mark is either under a label (merged ones counted "x n") or counted as unlabelled."""
    import matplotlib.pyplot as plt

    ann = hour_of_marks()
    placed, hidden = timeline.lane_labels(ann, 3600, 1305)
    assert sum(n for *_, n in placed) + hidden == 100
    assert any("\u00d7" in label for _, _, label, _ in placed) and len(placed) >= 15
    fig, ax, texts = lane_figure(ann, 3600)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in texts]
        lane = ax.get_window_extent(renderer)
        assert len(boxes) == len(timeline.lane_labels(ann, 3600, lane.width)[0]) >= 15
        for i, a in enumerate(boxes):
            assert lane.x0 - 1 <= a.x0 and a.x1 <= lane.x1 + 1 and lane.y0 - 1 <= a.y0 and a.y1 <= lane.y1 + 1
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)
        # without thinning the same labels would collide: one per mark, each at its onset
        naive = [ax.text(o, 0.5, timeline.short_label(d), fontsize=timeline.LANE_FONT)
                 for o, d in zip(ann["onset"], ann["description"])]
        nb = [t.get_window_extent(renderer) for t in naive]
        assert sum(a.overlaps(b) for i, a in enumerate(nb) for b in nb[i + 1:]) > 100
    finally:
        plt.close(fig)

"""Many recordings in one run (issue 19.6 --bids-root, 19.7): folders scored for the recordings directly in them,
output names kept apart, one line per file that fails while the others are scored, a summary table, and a
BIDS dataset (written by mne-bids) scored into derivatives/hms3rd/ without touching anything else."""
import hashlib
import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from data import recording
from data.signal import CLASSES, EEG_COLUMNS, FS
from inference import bids, recordings, timeline
from scripts import predict
from utils.io import DataError, run_cli

from conftest import CLINICAL, synthetic, write_edf

OUTPUTS = ["_windows.csv", "_timeline.png", "_events.tsv", "_annotations.csv", "_file_annotations.tsv"]
TEXT_OUTPUTS = ["_windows.csv", "_events.tsv", "_annotations.csv", "_file_annotations.tsv"]


def mne_raw(x):
    import mne

    return mne.io.RawArray(x[:, :19].T.astype(np.float64) * 1e-6, mne.create_info(EEG_COLUMNS[:19], float(FS), "eeg"),
                           verbose="error")


def write_brainvision(path, x) -> None:
    import mne

    mne.export.export_raw(path, mne_raw(x), verbose="error")  # through pybv


def write_parquet(path, x) -> None:
    pd.DataFrame(x, columns=EEG_COLUMNS).to_parquet(path, index=False)


def predict_run(capsys, inputs, ensemble, tmp_path, pred, *extra):
    """predict.py --recording as a user runs it, one window per forward pass (so a window's numbers do not
    depend on what else the run holds): (exit code, stdout, stderr)."""
    args = ["--recording", *map(str, inputs), "--output-dir", str(ensemble), "--out-dir", str(pred), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu", "--num-workers", "0", "--batch-size", "1", *extra]
    rc = run_cli(predict.main, args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_lines(err: str) -> list:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# --- which files a folder stands for, and their names ----------------------------------------------------
def test_a_folder_is_its_recordings_not_sidecars_sub_folders_or_split_parts(tmp_path, capsys):
    """A folder as labs keep them: an EDF, a BrainVision triple, an EEGLAB file, a parquet, a FIF split in two
    parts by MNE, a hidden copy, notes, a sidecar JSON and a sub-folder. Listed: the recordings directly in it,
    sorted by name; the FIF's second part is read through the first's header (one recording of full length)."""
    import mne

    d = tmp_path / "lab"
    (d / "sub").mkdir(parents=True)
    x = synthetic(60, seed=1)
    write_edf(d / "b.edf", x[:, :19], CLINICAL, FS)
    write_edf(d / ".hidden.edf", x[:, :19], CLINICAL, FS)
    write_edf(d / "sub" / "d.edf", x[:, :19], CLINICAL, FS)
    write_brainvision(d / "bv.vhdr", x)
    mne.export.export_raw(d / "lab.set", mne_raw(x), verbose="error")  # through eeglabio
    write_parquet(d / "c.parquet", x)
    (d / "notes.txt").write_text("x")
    (d / "info.json").write_text("{}")
    rng = np.random.default_rng(0)
    long = mne_raw(rng.normal(0, 20, (700 * FS, 19)).astype(np.float32))
    long.save(d / "big_raw.fif", split_size="10MB", verbose="error")
    assert (d / "big_raw-1.fif").is_file()  # MNE wrote two parts

    found, other = recording.recordings_in(d)
    names = ["b.edf", "big_raw-1.fif", "big_raw.fif", "bv.vhdr", "c.parquet", "lab.set"]
    assert [p.name for p in found] == names
    assert other == len(list(d.iterdir())) - len(names) == 6  # .hidden.edf, bv.eeg, bv.vmrk, info.json, notes, sub

    batch = recordings.batch_of([d, d / "b.edf"], tmp_path / "pred")  # b.edf named twice: scored once
    assert [t.path.name for t in batch.targets] == names and batch.failed == {}
    assert batch.notes == [f"{d}: 6 recording(s), 6 other entr(y/ies) passed over (sidecar files; sub-folders are "
                           f"not searched)"]
    failed = {}
    kept = recordings.open_all(batch, False, None, False, failed)
    assert [t.path.name for t, _ in kept] == ["b.edf", "big_raw.fif", "bv.vhdr", "c.parquet", "lab.set"]
    assert failed == {}
    assert f"{d / 'big_raw-1.fif'}: read as a part of {d / 'big_raw.fif'}" in capsys.readouterr().out
    assert dict((t.path.name, r.n_samples) for t, r in kept)["big_raw.fif"] == 700 * FS


def test_names_that_would_meet_are_named_after_their_paths(tmp_path):
    a, b, d = tmp_path / "a", tmp_path / "b", tmp_path / "d"
    batch = recordings.batch_of([a / "rec.edf", b / "rec.edf", a / "rec.bdf", a / "x.edf"], tmp_path / "out")
    assert [t.name for t in batch.targets] == ["a_rec_edf", "b_rec_edf", "a_rec_bdf", "x"]
    assert len({t.prefix for t in batch.targets}) == 4
    apart = [recordings.Target(a / "rec.edf", tmp_path / "o1", "rec"),
             recordings.Target(b / "rec.edf", tmp_path / "o2", "rec")]
    assert recordings.unique_names(apart) == apart  # different output folders: nothing meets
    bids_like = [recordings.Target(d / f"sub-01_task-rest_eeg.{e}", tmp_path / "o", "sub-01_task-rest", "_desc-hms3rd")
                 for e in ("edf", "vhdr")]
    assert [t.prefix.name for t in recordings.unique_names(bids_like)] == [
        "sub-01_task-rest_eeg_edf_desc-hms3rd", "sub-01_task-rest_eeg_vhdr_desc-hms3rd"]
    with pytest.raises(DataError, match=r"rec_edf.parquet would both write .*rec_edf_\*"):
        recordings.batch_of([d / "rec.edf", d / "rec.bdf", d / "rec_edf.parquet"], tmp_path / "out")


def test_summary_shares_and_event_counts_by_hand():
    """Windows every 10 s of a 137 s recording (the last one ends at the end), top classes mixed: the share of
    time of each top class, each window over the stretch from the midpoint with its neighbour before to the one
    after (the first and last reaching 5 s past their centre), and the events per class, counted by hand."""
    starts = np.r_[np.arange(0, 81, 10), 87] * FS
    top = [0, 0, 5, 1, 1, 1, 3, 5, 0, 0]
    probs = np.full((len(top), 6), 0.05)
    probs[np.arange(len(top)), top] = 0.75
    table = timeline.window_table(starts, probs, np.zeros(len(top)))
    ev = timeline.events(table, 137.0)
    row = recordings.summary_row(137.0, table, ev)
    centers = (starts / FS + 25).tolist()
    edges = [centers[0] - 5] + [(p + q) / 2 for p, q in zip(centers, centers[1:])] + [centers[-1] + 5]
    time_of = dict.fromkeys(CLASSES, 0.0)
    for k, cls in enumerate(top):
        time_of[CLASSES[cls]] += edges[k + 1] - edges[k]
    assert edges[0] == 20 and edges[-1] == 117 and edges[-2] == 108.5
    for cls in CLASSES:
        assert row[f"{cls.lower()}_share"] == pytest.approx(time_of[cls] / 97, abs=1e-6), cls
    assert [row[f"{c.lower()}_events"] for c in timeline.HARMFUL] == [2, 1, 0, 1, 0]  # 0-1 and 8-9 are two runs
    assert row["windows"] == 10 and row["length_s"] == 137.0


# --- a folder and files scored in one run ----------------------------------------------------------------
def test_a_folder_and_files_score_as_each_file_alone_and_failures_are_one_line(small_ensemble, tmp_path, capsys):
    """lab/ holds night.edf and night.vhdr (one stem, two formats), short.parquet (a 15 s drop-out), a corrupt
    EDF, a parquet without any signal and notes; other/night.edf (a third `night`) is named beside the folder.
    Each corrupt file: one error line naming it; the others scored, their outputs equal (to the last bit) to
    scoring each file alone, under names that keep them apart; the summary matches the per-file outputs;
    exit code 2 with a last line saying how many failed."""
    lab, other = tmp_path / "lab", tmp_path / "other"
    lab.mkdir(), other.mkdir()
    write_edf(lab / "night.edf", synthetic(60, seed=1)[:, :19], CLINICAL, FS)
    write_brainvision(lab / "night.vhdr", synthetic(75, seed=2))
    x = synthetic(85, seed=3)
    x[30 * FS:45 * FS] = np.nan
    write_parquet(lab / "short.parquet", x)
    (lab / "broken.edf").write_bytes(b"0" * 300)
    write_parquet(lab / "flat.parquet", np.full((60 * FS, 20), np.nan, np.float32))
    (lab / "notes.txt").write_text("x")
    write_edf(other / "night.edf", synthetic(65, seed=4)[:, :19], CLINICAL, FS)
    pred = tmp_path / "pred"

    rc, out, err = predict_run(capsys, [lab, other / "night.edf"], small_ensemble, tmp_path, pred)
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 3, err
    assert lines[0].startswith(f"error: {lab / 'broken.edf'}: cannot read as EDF/EDF+")
    assert lines[1] == f"error: {lab / 'flat.parquet'}: recording is NaN throughout (no signal)"
    assert lines[2].startswith("error: 2 of 6 input(s) failed (each named above); the other 4 were scored and written")
    assert sum("broken.edf" in line for line in err.splitlines()) == 1  # one line per failed file
    assert sum("flat.parquet" in line for line in err.splitlines()) == 1

    scored = {lab / "night.edf": "lab_night_edf", lab / "night.vhdr": "lab_night_vhdr",
              lab / "short.parquet": "short", other / "night.edf": "other_night_edf"}
    assert sorted(p.name for p in pred.iterdir()) == sorted(
        [n + s for n in scored.values() for s in OUTPUTS] + ["summary.tsv"])  # nothing lost, nothing overwritten
    for f, name in scored.items():
        alone = tmp_path / "alone" / f.parent.name / f.name
        assert predict_run(capsys, [f], small_ensemble, tmp_path, alone)[0] == 0
        stem = recordings.output_name(f)
        for s in TEXT_OUTPUTS:
            assert (pred / f"{name}{s}").read_text() == (alone / f"{stem}{s}").read_text(), (f, s)

    summary = pd.read_csv(pred / "summary.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert list(summary.columns) == recordings.SUMMARY_COLUMNS
    order = [lab / "broken.edf", lab / "flat.parquet", lab / "night.edf", lab / "night.vhdr", lab / "short.parquet",
             other / "night.edf"]
    assert summary["file"].tolist() == [str(f) for f in order]
    assert summary["status"].tolist() == ["failed"] * 2 + ["scored"] * 4
    assert summary["error"].iloc[:2].tolist() == [line.removeprefix("error: ") for line in lines[:2]]
    assert summary.loc[:1, "outputs"].isna().all() and summary.loc[2:, "error"].isna().all()
    seconds = {lab / "night.edf": 60, lab / "night.vhdr": 75, lab / "short.parquet": 85, other / "night.edf": 65}
    for _, row in summary.iloc[2:].iterrows():
        f = next(p for p in scored if str(p) == row["file"])
        assert row["outputs"] == str(pred / scored[f]) and row["length_s"] == seconds[f]
        windows = pd.read_csv(pred / f"{scored[f]}_windows.csv")
        events = pd.read_csv(pred / f"{scored[f]}_events.tsv", sep="\t")
        assert row["windows"] == len(windows)
        c = windows["center_s"].tolist()
        edges = [max(c[0] - 5, 0)] + [(p + q) / 2 for p, q in zip(c, c[1:])] + [min(c[-1] + 5, seconds[f])]
        cell = np.diff(edges)
        for cls in CLASSES:
            want = cell[(windows["top_class"] == cls).to_numpy()].sum() / cell.sum()
            assert row[f"{cls.lower()}_share"] == pytest.approx(want, abs=1e-6)
        for cls in timeline.HARMFUL:
            assert row[f"{cls.lower()}_events"] == (events["trial_type"] == cls).sum()
    gaps = pd.read_csv(pred / "short_windows.csv")["gap_s"]
    assert gaps.max() == 15  # the drop-out landed in the parquet's own windows
    table = out[out.index("summary: share of time by top class"):]
    assert f"{lab / 'broken.edf'}  " in table and table.count("failed") == 2
    assert out.count("[1/5] ") == 1 and "[5/5] " in out  # one progress line per recording whose header reads


def test_inputs_that_fail_before_any_scoring(small_ensemble, tmp_path, capsys):
    """A folder without recordings, alone: its one line, as a single bad file's (exit 2, nothing written).
    With a missing file beside it: a line for each, then one saying none could be read."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    pred = tmp_path / "pred"
    rc, out, err = predict_run(capsys, [empty], small_ensemble, tmp_path, pred)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {empty}: no recording in this folder (.edf, .bdf")
    rc, out, err = predict_run(capsys, [empty, tmp_path / "absent.edf"], small_ensemble, tmp_path, pred)
    assert rc == 2 and error_lines(err) == [
        f"error: {empty}: no recording in this folder ({', '.join(recording.FORMATS)}; sub-folders are not searched; "
        f"a BIDS dataset: --bids-root)", f"error: {tmp_path / 'absent.edf'}: recording not found",
        "error: none of the 2 input(s) could be read (each named above)"]
    (tmp_path / "broken.edf").write_bytes(b"0" * 300)
    rc, out, err = predict_run(capsys, [tmp_path / "broken.edf"], small_ensemble, tmp_path, pred)
    assert rc == 2 and err.count("\n") == 1 and "broken.edf: cannot read as EDF/EDF+" in err
    assert not pred.exists()


def test_an_output_that_cannot_be_written_fails_that_file_only(small_ensemble, tmp_path, capsys):
    """A folder where a.parquet's window table should go (a user's folder of that name, left as it was): one
    line for a.parquet, b.parquet written, exit 2."""
    for name, seed in (("a", 5), ("b", 6)):
        write_parquet(tmp_path / f"{name}.parquet", synthetic(55, seed=seed))
    pred = tmp_path / "pred"
    (pred / "a_windows.csv").mkdir(parents=True)
    rc, out, err = predict_run(capsys, [tmp_path / "a.parquet", tmp_path / "b.parquet"], small_ensemble, tmp_path, pred)
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 2
    assert lines[0] == (f"error: {tmp_path / 'a.parquet'}: cannot write {pred / 'a_windows.csv'}: Is a directory "
                        f"(nothing was written)")
    assert lines[1].startswith("error: 1 of 2 input(s) failed")
    assert (pred / "a_windows.csv").is_dir() and not list((pred / "a_windows.csv").iterdir())
    assert sorted(p.name for p in pred.iterdir()) == sorted(["a_windows.csv", "summary.tsv"]
                                                            + [f"b{s}" for s in OUTPUTS])


# --- a BIDS dataset --------------------------------------------------------------------------------------
def write_bids(root) -> list:
    """Three recordings as mne-bids writes them: sub-01 session 1 (EDF, with two marks: also its raw
    events.tsv), sub-01 session 2 (BrainVision), sub-02 without sessions (EDF)."""
    import mne
    import mne_bids

    paths = []
    for k, (sub, ses, fmt) in enumerate([("01", "1", "EDF"), ("01", "2", "BrainVision"), ("02", None, "EDF")]):
        raw = mne_raw(synthetic(60 + 5 * k, seed=10 + k))
        if k == 0:
            raw.set_annotations(mne.Annotations([5.0, 20.0], [0.0, 2.0], ["spike", "HV"]))
        raw.info["line_freq"] = 50
        bp = mne_bids.BIDSPath(subject=sub, session=ses, task="rest", root=root, datatype="eeg")
        paths.append(mne_bids.write_raw_bids(raw, bp, format=fmt, allow_preload=True, verbose="error"))
    return paths


def snapshot(root, skip) -> dict:
    """Every file under root but those under `skip`: content hash and modification time."""
    return {p.relative_to(root): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and skip not in p.parents}


def test_a_bids_dataset_is_scored_into_derivatives_and_nothing_else_is_touched(small_ensemble, tmp_path, capsys):
    import mne_bids

    root = tmp_path / "ds"
    paths = write_bids(root)
    (root / "derivatives" / "other-tool").mkdir(parents=True)
    (root / "derivatives" / "other-tool" / "keep.txt").write_text("a user's file")
    (root / "sourcedata").mkdir()
    write_edf(root / "sourcedata" / "sub-01_task-rest_eeg.edf", synthetic(60)[:, :19], CLINICAL, FS)  # not scored
    deriv = root / "derivatives" / "hms3rd"
    before = snapshot(root, deriv)

    args = ["--bids-root", str(root), "--output-dir", str(small_ensemble), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--num-workers", "0", "--batch-size", "1"]
    assert run_cli(predict.main, args) == 0
    capsys.readouterr()
    assert snapshot(root, deriv) == before  # nothing outside derivatives/hms3rd written, changed or touched

    made = {p.relative_to(deriv) for p in deriv.rglob("*") if p.is_file()}
    expected = {"dataset_description.json", "summary.tsv"}
    alone = tmp_path / "alone"
    assert predict_run(capsys, [bp.fpath for bp in paths], small_ensemble, tmp_path, alone)[0] == 0
    for bp in paths:  # where mne-bids puts a derivative's events file of this recording
        events = bp.copy().update(root=deriv, description="hms3rd", suffix="events", extension=".tsv", check=False)
        assert mne_bids.get_entities_from_fname(events.fpath.name)["description"] == "hms3rd"
        prefix = str(events.fpath.relative_to(deriv)).removesuffix("_events.tsv")
        expected |= {prefix + s for s in OUTPUTS}
        for s in TEXT_OUTPUTS:
            got, want = deriv / f"{prefix}{s}", alone / f"{recordings.output_name(bp.fpath)}{s}"
            assert got.read_text() == want.read_text(), (bp, s)
    assert {str(p) for p in made} == expected
    marks = pd.read_csv(deriv / "sub-01" / "ses-1" / "eeg" / "sub-01_ses-1_task-rest_desc-hms3rd_file_annotations.tsv",
                        sep="\t")
    assert marks["description"].tolist() == ["spike", "HV"]

    desc = json.loads((deriv / "dataset_description.json").read_text())
    git = subprocess.run(["git", "-C", str(bids.REPO), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip()
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"] == bids.BIDS_VERSION and desc["Name"]
    (gen,) = desc["GeneratedBy"]
    assert gen["Name"] == deriv.name == "hms3rd" and gen["Version"] == (git or "unknown")
    assert str(small_ensemble) in gen["Description"] and "every 10 s" in gen["Description"]
    assert desc["SourceDatasets"] == [{"URL": "bids:raw:"}]
    assert (deriv / desc["DatasetLinks"]["raw"]).resolve() == root.resolve()
    summary = pd.read_csv(deriv / "summary.tsv", sep="\t")
    assert summary["file"].tolist() == [str(bp.fpath) for bp in paths] and (summary["status"] == "scored").all()


def test_bids_root_argument_errors(small_ensemble, tmp_path, capsys):
    """--bids-root excludes --recording and --out-dir; a folder without BIDS EEG recordings is one line and
    nothing is written."""
    not_bids = tmp_path / "notbids"
    (not_bids / "sub-01").mkdir(parents=True)
    write_edf(not_bids / "sub-01" / "rec_eeg.edf", synthetic(60)[:, :19], CLINICAL, FS)  # no eeg/ folder
    base = ["--output-dir", str(small_ensemble), "--device", "cpu"]
    for extra, msg in ((["--recording", str(tmp_path)], "argument --recording: not allowed with argument --bids-root"),
                       (["--out-dir", str(tmp_path / "p")], "--out-dir does not apply with --bids-root")):
        assert run_cli(predict.main, ["--bids-root", str(not_bids), *base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert run_cli(predict.main, ["--bids-root", str(not_bids), *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{not_bids}: no BIDS EEG recording (sub-*/[ses-*/]eeg/*_eeg.<ext>" in err
    assert not (not_bids / "derivatives").exists()

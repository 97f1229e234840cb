"""Recordings of any length and format scored in 50 s windows by the ensemble. Per recording: the window
table (<name>_windows.csv), the timeline picture (<name>_timeline.png), the events (runs of windows of a
harmful pattern) as a BIDS events file (<name>_events.tsv) and as MNE's CSV annotations
(<name>_annotations.csv, for mne.read_annotations and EEG viewers), the file's own annotations
(<name>_file_annotations.tsv), and a summary line."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from data import channels, recording
from data.signal import FS, WINDOW
from inference import timeline
from inference.ensemble import describe_amp, ensemble_probs, load_ensemble, resolve_device
from inference.fast_path import choose_paths, describe_paths
from utils.io import DataError, atomic_write, atomic_write_csv, warn


def output_name(path: Path) -> str:
    """rec.edf -> rec; rec.fif.gz -> rec."""
    return path.name[: -len(recording.suffix(path))] if recording.suffix(path) else path.name


def score_recordings(files, output_dir, blend_path=None, out_dir="predictions", stride=10.0, device="auto",
                       batch_size=16, num_workers=0, cache_dir=None, allow_missing=False, amp_dtype=None,
                       channel_map=None, event_threshold=None, fast_path="auto") -> dict:
    """Score each file in 50 s windows every `stride` s: {file: window table}; writes the outputs.
    `amp_dtype` (float16, bfloat16, float32) replaces each run's own autocast dtype (inference/ensemble.py);
    `channel_map`: a channel map file (data/channels.read_channel_map) for every file; `event_threshold`:
    a window is also part of a class's event when its probability for it reaches this; `fast_path`: auto (on
    the CPU each config runs on the fastest path within 0.01 of float32, inference/fast_path.py) or off."""
    dev = resolve_device(device)  # first: an unusable device is one line before any file is read
    if event_threshold is not None and not 0 < event_threshold <= 1:
        raise DataError(f"--event-threshold must be in (0, 1], got {event_threshold}")
    user_map = channels.read_channel_map(channel_map) if channel_map is not None else None
    recs = [recording.open_recording(f, allow_missing, user_map) for f in files]  # every header checked first
    names = [output_name(r.source.path) for r in recs]
    if len(set(names)) < len(names):
        raise DataError(f"two recordings share an output name ({', '.join(names)}): score them separately")
    weights, runs = load_ensemble(output_dir, blend_path, Path(files[0]).parent, cache_dir)
    cache_root = Path(cache_dir) if cache_dir else recording.default_cache_dir()
    if user_map is not None:  # a channel map changes what a file decodes to: its own cache folder
        cache_root = cache_root / f"channel-map_{user_map.digest()}"
    store = recording.RecordingStore(recs, cache_root)
    starts, parts = [], []
    for i, rec in enumerate(recs):
        print(rec.describe())
        for note in rec.notes():
            warn(note)
        t0 = time.perf_counter()
        store.build(i)  # decoded once (reused while the file is unchanged)
        print(f"  decoded to {store.cache_path(i)} in {time.perf_counter() - t0:.1f} s")
        note = recording.amplitude_note(store.recording(i), rec.source.path.name)
        if note:
            warn(note)
        if rec.n_samples < WINDOW:
            warn(f"{rec.source.path.name}: {rec.seconds:.1f} s long, shorter than the 50 s window: scored as one "
                 f"window zero-padded by {(WINDOW - rec.n_samples) / FS:.1f} s")
        starts.append(timeline.window_starts(rec.n_samples, stride))
        parts.append(pd.DataFrame({"eeg_id": i, "eeg_label_offset_seconds": starts[-1] / FS}))
    windows = pd.concat(parts, ignore_index=True)
    n_runs = sum(len(r) for r in runs.values())
    paths = choose_paths(runs, windows, dev, store, batch_size, amp_dtype, fast_path)
    print(f"{len(recs)} recording(s), {len(windows)} window(s), {len(runs)} config(s), {n_runs} run(s), device {dev}, "
          f"{describe_paths(paths) if paths else describe_amp(runs, dev, amp_dtype)}")
    t0 = time.perf_counter()
    probs, _ = ensemble_probs(weights, runs, windows, dev, batch_size, num_workers, store, "windows", "win*run",
                              amp_dtype, paths)
    secs = time.perf_counter() - t0
    print(f"scored {len(windows)} window(s) in {secs:.1f} s ({len(windows) / max(secs, 1e-9):.1f} windows/s)")
    tables, first = {}, 0
    for i, (rec, name) in enumerate(zip(recs, names)):
        gaps = timeline.gap_seconds(store.recording(i), starts[i])
        table = timeline.window_table(starts[i], probs[first:first + len(starts[i])], gaps)
        first += len(starts[i])
        tables[rec.source.path] = table
        write_outputs(table, rec, store.recording(i), Path(out_dir), name, stride, event_threshold)
    return tables


def write_outputs(table, rec, signal, out_dir: Path, name: str, stride: float, event_threshold=None) -> None:
    """<name>_windows.csv, _events.tsv, _annotations.csv, _file_annotations.tsv, _timeline.png, the summary."""
    csv = out_dir / f"{name}_windows.csv"
    atomic_write_csv(csv, table)
    ev = timeline.events(table, rec.seconds, event_threshold)
    atomic_write(out_dir / f"{name}_events.tsv", lambda tmp: write_bids_events(tmp, ev))
    atomic_write(out_dir / f"{name}_annotations.csv", lambda tmp: write_mne_annotations(tmp, ev, rec.source.start))
    marks = rec.annotations()
    atomic_write(out_dir / f"{name}_file_annotations.tsv", lambda tmp: write_file_annotations(tmp, marks))
    summary = f"{rec.source.path.name}: {timeline.summary(rec.seconds, table)}"
    title = f"{summary}\neach window 50 s, every {stride:g} s; its probabilities describe its central 10 s"
    png = timeline.draw_timeline(table, rec.seconds, timeline.overview(signal), title, out_dir / f"{name}_timeline.png",
                                 marks)
    print(summary)
    print(f"  events ({'top class' if event_threshold is None else f'top class or p >= {event_threshold:g}'}): "
          f"{timeline.event_counts(ev)}; the file's own annotations: {len(marks)}")
    print(f"  wrote {csv}, {png} and {name}_events.tsv, _annotations.csv, _file_annotations.tsv beside them")


def _one_line_text(values) -> list:
    return [" ".join(str(v).split()) for v in values]


def write_bids_events(path, ev: pd.DataFrame) -> None:
    """BIDS events: tab-separated, onset and duration (s from the recording's first sample) first, n/a
    for a missing value."""
    out = ev.round({"onset": 6, "duration": 6, "mean_probability": 6, "peak_probability": 6,
                    "first_window_s": 6, "last_window_s": 6})
    out.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def write_mne_annotations(path, ev: pd.DataFrame, start=None) -> None:
    """MNE's CSV annotations (what mne.Annotations.save writes to .csv): onset,duration,description with
    the onset as a date and time to the microsecond, the recording's start (UTC) plus the event's onset,
    or 1970-01-01 00:00:00 plus the onset for a recording with no start time (MNE's orig_time None).
    mne.read_annotations then gives orig_time = the first onset's time, and raw.set_annotations places
    the events on a recording with that start. Events in the trial_type's names."""
    origin = pd.Timestamp(start) if start is not None else pd.Timestamp("1970-01-01", tz="UTC")
    origin = (origin.tz_convert("UTC") if origin.tzinfo is not None else origin).tz_localize(None)
    onset_us = np.round(ev["onset"].to_numpy(np.float64) * 1e6).astype(np.int64)
    onsets = [(origin + pd.Timedelta(microseconds=int(u))).strftime("%Y-%m-%d %H:%M:%S.%f") for u in onset_us]
    pd.DataFrame({"onset": onsets, "duration": ev["duration"].round(6).to_numpy(),
                  "description": ev["trial_type"].to_numpy()}).to_csv(path, index=False, lineterminator="\n")


def write_file_annotations(path, marks: pd.DataFrame) -> None:
    """The recording's own annotations: onset, duration (s from its first sample), description (tabs and
    line breaks made spaces), tab-separated."""
    out = pd.DataFrame({"onset": marks["onset"].round(6), "duration": marks["duration"].round(6),
                        "description": _one_line_text(marks["description"])})
    out.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")

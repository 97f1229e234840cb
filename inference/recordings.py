"""Recordings of any length and format scored in 50 s windows by the ensemble: per recording a window table
(<name>_windows.csv), a timeline picture (<name>_timeline.png) and a summary line."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from data import channels, recording
from data.signal import FS, WINDOW
from inference import timeline
from inference.ensemble import describe_amp, ensemble_probs, load_ensemble, resolve_device
from utils.io import DataError, atomic_write_csv, warn


def output_name(path: Path) -> str:
    """rec.edf -> rec; rec.fif.gz -> rec."""
    return path.name[: -len(recording.suffix(path))] if recording.suffix(path) else path.name


def score_recordings(files, output_dir, blend_path=None, out_dir="predictions", stride=10.0, device="auto",
                       batch_size=16, num_workers=0, cache_dir=None, allow_missing=False, amp_dtype=None,
                       channel_map=None) -> dict:
    """Score each file in 50 s windows every `stride` s: {file: window table}; writes the csv and png.
    `amp_dtype` (float16, bfloat16, float32) replaces each run's own autocast dtype (inference/ensemble.py);
    `channel_map`: a channel map file (data/channels.read_channel_map) for every file."""
    dev = resolve_device(device)  # first: an unusable device is one line before any file is read
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
    print(f"{len(recs)} recording(s), {len(windows)} window(s), {len(runs)} config(s), {n_runs} run(s), device {dev}, "
          f"{describe_amp(runs, dev, amp_dtype)}")
    t0 = time.perf_counter()
    probs, _ = ensemble_probs(weights, runs, windows, dev, batch_size, num_workers, store, "windows", "win*run",
                              amp_dtype)
    secs = time.perf_counter() - t0
    print(f"scored {len(windows)} window(s) in {secs:.1f} s ({len(windows) / max(secs, 1e-9):.1f} windows/s)")
    tables, first = {}, 0
    for i, (rec, name) in enumerate(zip(recs, names)):
        gaps = timeline.gap_seconds(store.recording(i), starts[i])
        table = timeline.window_table(starts[i], probs[first:first + len(starts[i])], gaps)
        first += len(starts[i])
        tables[rec.source.path] = table
        write_outputs(table, rec, store.recording(i), Path(out_dir), name, stride)
    return tables


def write_outputs(table, rec, signal, out_dir: Path, name: str, stride: float) -> None:
    """<name>_windows.csv, <name>_timeline.png and the summary line."""
    csv = out_dir / f"{name}_windows.csv"
    atomic_write_csv(csv, table)
    summary = f"{rec.source.path.name}: {timeline.summary(rec.seconds, table)}"
    title = f"{summary}\neach window 50 s, every {stride:g} s; its probabilities describe its central 10 s"
    png = timeline.draw_timeline(table, rec.seconds, timeline.overview(signal), title, out_dir / f"{name}_timeline.png")
    print(summary)
    print(f"  wrote {csv} and {png}")

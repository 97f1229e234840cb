"""Recordings of any length and format scored in 50 s windows by the ensemble. Per recording: the window
table (<name>_windows.csv), the timeline picture (<name>_timeline.png), the events (runs of windows of a
harmful pattern) as a BIDS events file (<name>_events.tsv) and as MNE's CSV annotations
(<name>_annotations.csv, for mne.read_annotations and EEG viewers), the file's own annotations
(<name>_file_annotations.tsv), and a summary line. Per run: a summary table (summary.tsv) of every
recording, scored or failed. A file that cannot be read, decoded or written is one error line and the
others are scored; the run then ends with an error naming how many failed."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from data import channels, recording
from data.signal import CLASSES, FS, WINDOW
from inference import timeline
from inference.ensemble import describe_amp, ensemble_probs, load_ensemble, resolve_device
from inference.fast_path import choose_paths, describe_paths
from utils.io import DataError, atomic_write, atomic_write_csv, atomic_write_text, error, one_line, warn

SUMMARY_FILE = "summary.tsv"


def output_name(path: Path) -> str:
    """rec.edf -> rec; rec.fif.gz -> rec."""
    return path.name[: -len(recording.suffix(path))] if recording.suffix(path) else path.name


@dataclass(frozen=True)
class Target:
    """One recording to score and where its outputs go: <out_dir>/<name><suffix>_windows.csv, ...
    (`suffix` stays when the name is made unique: BIDS's _desc-hms3rd)."""
    path: Path
    out_dir: Path
    name: str
    suffix: str = ""

    @property
    def prefix(self) -> Path:
        return self.out_dir / f"{self.name}{self.suffix}"


@dataclass
class Batch:
    """What one run scores: the targets, inputs already known to fail (path -> one-line reason), lines
    saying what the inputs held, the run's summary table, and files written with the outputs (path -> text;
    BIDS: dataset_description.json)."""
    targets: list
    summary: Path
    failed: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def batch_of(inputs, out_dir) -> Batch:
    """--recording's files and folders (a folder: the recordings directly in it, data/recording.recordings_in),
    each file once however often it is named; outputs in out_dir under unique names."""
    out_dir = Path(out_dir)
    targets, failed, notes, seen = [], {}, [], set()
    for item in map(Path, inputs):
        files = [item]
        if item.is_dir():
            files, other = recording.recordings_in(item)
            passed = f", {other} other entr(y/ies) passed over (sidecar files; sub-folders are not searched)"
            notes.append(f"{item}: {len(files)} recording(s)" + (passed if other else ""))
            if not files:
                failed[item] = (f"{item}: no recording in this folder ({', '.join(recording.FORMATS)}; "
                                f"sub-folders are not searched; a BIDS dataset: --bids-root)")
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                targets.append(Target(f, out_dir, output_name(f)))
    return Batch(unique_names(targets), out_dir / SUMMARY_FILE, failed, notes)


def unique_names(targets: list) -> list:
    """Targets whose outputs would meet (one folder, one name) are named instead after their path below the
    folder their paths share, '/' and '.' written '_' (a/rec.edf, b/rec.edf -> a_rec_edf, b_rec_edf; rec.edf,
    rec.bdf -> rec_edf, rec_bdf), so no output overwrites another; names that still meet stop the run."""
    groups = {}
    for t in targets:
        groups.setdefault(t.prefix.resolve(), []).append(t)
    out = []
    for t in targets:
        group = groups[t.prefix.resolve()]
        if len(group) > 1:
            base = os.path.commonpath([str(g.path.resolve().parent) for g in group])
            t = replace(t, name=re.sub(r"[/\\.]", "_", os.path.relpath(t.path.resolve(), base)))
        out.append(t)
    seen = {}
    for t in out:
        other = seen.setdefault(t.prefix.resolve(), t)
        if other is not t:
            raise DataError(f"{other.path} and {t.path} would both write {t.prefix}_*: rename one of them or score "
                            f"them in separate runs (--out-dir)")
    return out


def _reason(path, err: BaseException) -> str:
    """One line naming the file and what went wrong with it."""
    msg = one_line(err) if isinstance(err, DataError) else f"{type(err).__name__}: {one_line(err)}"
    return msg if str(path) in msg else f"{path}: {msg}"


def _guarded(failed: dict, path, strict: bool, fn, report: bool = True):
    """fn(), or None with the file's one-line reason in `failed` (printed unless `report` is False): one
    file's fault stops that file only. `strict` (a run of one recording): the error itself, as it is."""
    if strict:
        return fn()
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - whatever stops one file, the others are scored
        failed[path] = _reason(path, err)
        if report:
            error(failed[path])
        return None


def open_all(batch: Batch, allow_missing, user_map, strict, failed) -> list:
    """[(target, Recording)] of the batch's targets whose header reads, after one line per folder; inputs
    that fail go to `failed`, one error line each. A split FIF's later parts are read through its first
    part's header: no recordings of their own."""
    for note in batch.notes:
        print(note)
    for path, reason in batch.failed.items():
        failed[path] = reason
        error(reason)
    bad = {}
    recs = [_guarded(bad, t.path, strict, lambda: recording.open_recording(t.path, allow_missing, user_map), False)
            for t in batch.targets]
    part_of = {Path(f).resolve(): t.path for t, rec in zip(batch.targets, recs) if rec is not None
               for f in rec.source.files if Path(f).resolve() != t.path.resolve()}
    kept = []
    for t, rec in zip(batch.targets, recs):
        if t.path.resolve() in part_of:
            print(f"{t.path}: read as a part of {part_of[t.path.resolve()]}")
        elif rec is not None:
            kept.append((t, rec))
        else:
            failed[t.path] = bad[t.path]
            error(bad[t.path])
    return kept


def _decode(store, i: int, rec, n: int, stride: float) -> tuple[np.ndarray, bool]:
    """Recording i decoded into the cache (once; reused while its files are unchanged), after one progress
    line; its warnings; (its windows' start samples, whether the cache held it already)."""
    print(f"[{i + 1}/{n}] {rec.describe()}", flush=True)
    for note in rec.notes():
        warn(note)
    cached = store.cache_path(i).exists()
    store.build(i)
    note = recording.amplitude_note(store.recording(i), rec.source.path.name)
    if note:
        warn(note)
    if rec.n_samples < WINDOW:
        warn(f"{rec.source.path.name}: {rec.seconds:.1f} s long, shorter than the 50 s window: scored as one "
             f"window zero-padded by {(WINDOW - rec.n_samples) / FS:.1f} s")
    return timeline.window_starts(rec.n_samples, stride), cached


def score_recordings(batch: Batch, output_dir, blend_path=None, stride=10.0, device="auto", batch_size=16,
                     num_workers=0, cache_dir=None, allow_missing=False, amp_dtype=None, channel_map=None,
                     event_threshold=None, fast_path="auto") -> dict:
    """Score each recording of `batch` in 50 s windows every `stride` s: {file: window table}; writes the
    outputs and the summary table. `amp_dtype` (float16, bfloat16, float32) replaces each run's own autocast
    dtype (inference/ensemble.py); `channel_map`: a channel map file (data/channels.read_channel_map) for
    every file; `event_threshold`: a window is also part of a class's event when its probability for it
    reaches this; `fast_path`: auto (on the CPU each config runs on the fastest path within 0.01 of float32,
    inference/fast_path.py) or off. A failed file: one error line, the others scored, then a DataError saying
    how many failed."""
    dev = resolve_device(device)  # first: an unusable device is one line before any file is read
    if event_threshold is not None and not 0 < event_threshold <= 1:
        raise DataError(f"--event-threshold must be in (0, 1], got {event_threshold}")
    user_map = channels.read_channel_map(channel_map) if channel_map is not None else None
    strict = len(batch.targets) + len(batch.failed) == 1  # one input: its error is the run's, as it is
    if strict and batch.failed:
        raise DataError(next(iter(batch.failed.values())))
    failed = {}
    items = open_all(batch, allow_missing, user_map, strict, failed)  # every header checked first
    if not items:
        raise DataError(f"none of the {len(failed)} input(s) could be read (each named above)")
    weights, runs = load_ensemble(output_dir, blend_path, items[0][0].path.parent, cache_dir)
    cache_root = Path(cache_dir) if cache_dir else recording.default_cache_dir()
    if user_map is not None:  # a channel map changes what a file decodes to: its own cache folder
        cache_root = cache_root / f"channel-map_{user_map.digest()}"
    store = recording.RecordingStore([rec for _, rec in items], cache_root)
    starts, cached, t0 = {}, 0, time.perf_counter()
    for i, (t, rec) in enumerate(items):
        done = _guarded(failed, t.path, strict, lambda: _decode(store, i, rec, len(items), stride))
        if done is not None:
            starts[i], cached = done[0], cached + done[1]
    print(f"decoded {len(starts) - cached} recording(s) in {time.perf_counter() - t0:.1f} s ({cached} already cached) "
          f"into {cache_root}")
    tables, rows = {}, {}
    if starts:
        probs = _score(store, starts, weights, runs, dev, batch_size, num_workers, amp_dtype, fast_path)
        for i, p in probs.items():
            t, rec = items[i]
            table = timeline.window_table(starts[i], p, timeline.gap_seconds(store.recording(i), starts[i]))
            ev = _guarded(failed, t.path, strict,
                          lambda: write_outputs(table, rec, store.recording(i), t, stride, event_threshold))
            if ev is not None:
                tables[rec.source.path], rows[t.path] = table, summary_row(rec.seconds, table, ev)
    for path, text in batch.extra.items():
        atomic_write_text(path, text)
    write_summary(batch, rows, failed)
    if failed:
        raise DataError(f"{len(failed)} of {len(failed) + len(rows)} input(s) failed (each named above); "
                        f"the other {len(rows)} were scored and written; summary in {batch.summary}")
    return tables


def _score(store, starts: dict, weights, runs, dev, batch_size, num_workers, amp_dtype, fast_path="auto") -> dict:
    """One pass of the ensemble over every window of every decoded recording: {recording: probabilities}; each
    config on its fastest path within 0.01 of float32 on the CPU (`fast_path` auto, inference/fast_path.py)."""
    windows = pd.concat([pd.DataFrame({"eeg_id": i, "eeg_label_offset_seconds": s / FS}) for i, s in starts.items()],
                        ignore_index=True)
    n_runs = sum(len(r) for r in runs.values())
    paths = choose_paths(runs, windows, dev, store, batch_size, amp_dtype, fast_path)
    print(f"{len(starts)} recording(s), {len(windows)} window(s), {len(runs)} config(s), {n_runs} run(s), device {dev}, "
          f"{describe_paths(paths) if paths else describe_amp(runs, dev, amp_dtype)}")
    t0 = time.perf_counter()
    probs, _ = ensemble_probs(weights, runs, windows, dev, batch_size, num_workers, store, "windows", "win*run",
                              amp_dtype, paths)
    secs = time.perf_counter() - t0
    print(f"scored {len(windows)} window(s) in {secs:.1f} s ({len(windows) / max(secs, 1e-9):.1f} windows/s)")
    bounds = np.cumsum([0] + [len(s) for s in starts.values()])
    return {i: probs[a:b] for i, a, b in zip(starts, bounds[:-1], bounds[1:])}


def write_outputs(table, rec, signal, t: Target, stride: float, event_threshold=None) -> pd.DataFrame:
    """<prefix>_windows.csv, _events.tsv, _annotations.csv, _file_annotations.tsv, _timeline.png, the summary
    line; returns the events."""
    name = t.prefix.name
    atomic_write_csv(t.out_dir / f"{name}_windows.csv", table)
    ev = timeline.events(table, rec.seconds, event_threshold)
    atomic_write(t.out_dir / f"{name}_events.tsv", lambda tmp: write_bids_events(tmp, ev))
    atomic_write(t.out_dir / f"{name}_annotations.csv", lambda tmp: write_mne_annotations(tmp, ev, rec.source.start))
    marks = rec.annotations()
    atomic_write(t.out_dir / f"{name}_file_annotations.tsv", lambda tmp: write_file_annotations(tmp, marks))
    summary = f"{rec.source.path.name}: {timeline.summary(rec.seconds, table)}"
    title = f"{summary}\neach window 50 s, every {stride:g} s; its probabilities describe its central 10 s"
    timeline.draw_timeline(table, rec.seconds, timeline.overview(signal), title, t.out_dir / f"{name}_timeline.png",
                           marks)
    print(summary)
    print(f"  events ({'top class' if event_threshold is None else f'top class or p >= {event_threshold:g}'}): "
          f"{timeline.event_counts(ev)}; the file's own annotations: {len(marks)}")
    print(f"  wrote {t.prefix}_windows.csv, _timeline.png, _events.tsv, _annotations.csv, _file_annotations.tsv")
    return ev


SHARES = [f"{c.lower()}_share" for c in CLASSES]
EVENT_COUNTS = [f"{c.lower()}_events" for c in timeline.HARMFUL]
SUMMARY_COLUMNS = ["file", "outputs", "status", "length_s", "windows", *SHARES, *EVENT_COUNTS, "error"]


def summary_row(seconds: float, table: pd.DataFrame, ev: pd.DataFrame) -> dict:
    """A scored recording's length, windows, share of time per top class (timeline.time_shares: each
    window over its stretch of time) and events per harmful class."""
    shares = timeline.time_shares(table, seconds)
    counts = ev["trial_type"].value_counts()
    return {"length_s": round(seconds, 3), "windows": len(table),
            **{col: round(shares.get(c, 0.0), 6) for col, c in zip(SHARES, CLASSES)},
            **{col: int(counts.get(c, 0)) for col, c in zip(EVENT_COUNTS, timeline.HARMFUL)}}


def write_summary(batch: Batch, rows: dict, failed: dict) -> pd.DataFrame:
    """The run's summary table (summary.tsv, n/a where a value is missing), printed too: a row per input
    that failed before its files were known (a folder without recordings), then one per recording in input
    order, scored (file, outputs, its summary_row) or failed (file, the error's line)."""
    known = {t.path for t in batch.targets}
    records = [{"file": str(p), "status": "failed", "error": r} for p, r in failed.items() if p not in known]
    for t in batch.targets:
        if t.path in rows:
            records.append({"file": str(t.path), "outputs": str(t.prefix), "status": "scored", **rows[t.path]})
        elif t.path in failed:
            records.append({"file": str(t.path), "status": "failed", "error": failed[t.path]})
    df = pd.DataFrame(records, columns=SUMMARY_COLUMNS).astype({c: "Int64" for c in ["windows", *EVENT_COUNTS]})
    atomic_write(batch.summary, lambda tmp: df.to_csv(tmp, sep="\t", index=False, na_rep="n/a", lineterminator="\n"))
    print(summary_text(df))
    print(f"wrote {batch.summary}")
    return df


def summary_text(df: pd.DataFrame) -> str:
    """The summary table as printed: file, length, windows, % of time per top class | events per class."""
    cells = [["file", "length", "windows", *CLASSES, "|", *timeline.HARMFUL]]
    for r in df.to_dict("records"):
        if r["status"] != "scored":
            cells.append([r["file"], "failed"] + [""] * (len(cells[0]) - 2))
            continue
        cells.append([r["file"], recording.hhmmss(r["length_s"]), str(r["windows"]),
                      *[f"{100 * r[c]:.0f}%" for c in SHARES], "|", *[str(r[c]) for c in EVENT_COUNTS]])
    widths = [max(len(row[k]) for row in cells) for k in range(len(cells[0]))]
    lines = ["  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    return "\n".join(["summary: share of time by top class | events per harmful class", *lines])


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

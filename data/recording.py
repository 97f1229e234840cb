"""Recordings outside the Kaggle layout: EDF/EDF+ (EDF+D too), BDF, BrainVision, FIF, EEGLAB (through
MNE-Python's readers) and Kaggle-style parquet of any length, read into the models' layout.

What the models need is 200 Hz microvolt signals of the 16 electrodes of the double banana. So:
- channels are found by name, never by position, through data/channels.py's one normaliser (case,
  BCI2000 dots, `EEG `/`POL ` prefixes and reference suffixes such as `-REF`, `-LE`, `-AVG`, `-A1`,
  T7/T8/P7/P8 read as T3/T4/T5/T6) and the user's `--channel-map`; a numbered cap layout (BioSemi,
  EGI, 1..N) is refused unless the map names its channels;
- a file without the referential electrodes but with the 16 double-banana pairs (`FP1-F7`, `F7-T7`,
  ...; a reversed pair negated) is read from the pairs: the electrode potentials whose montage gives
  the pairs back (data/channels.electrodes_from_pairs), so the datasets' montage sees the file's pairs;
- any sampling rate is resampled to 200 Hz with a polyphase filter (scipy `resample_poly`),
  computed in chunks that reproduce the whole-signal result, so a day-long file never sits in memory;
- a discontinuous EDF+/BDF+ (EDF+D) is placed on its true time line from each data record's time
  stamp (MNE reads the records back to back), and a recording's gaps (between EDF+D records, or
  annotated BAD_ACQ_SKIP) are NaN, so they become the `gap_s` seconds of the windows over them;
- MNE reads volts, the models were trained on microvolts: x 1e6 (parquet is microvolts already);
- the file's own annotations (EDF+ annotations, BrainVision markers, FIF annotations, EEGLAB events)
  come through MNE, timed from the recording's first sample (`Source.annotations`);
- the result is decoded once into a memory-mapped float32 .npy of (T, 20) in EEG_COLUMNS order
  (NaN kept: the datasets turn NaN into 0 after the montage, as in training) by `RecordingStore`,
  the recording cache of data/eeg_store.py, keyed by every file the reader opens (path, size and
  mtime of the header, the data file and the marker file, or each part of a split FIF) and by
  DECODE_VERSION, so an edited data file or a change of the decoding is decoded again.
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from data import channels as chn
from data.eeg_store import EEGStore, ParquetEEG
from data.signal import EEG_COLUMNS, FS, MONTAGE, MONTAGE_ELECTRODES, MONTAGE_NAMES
from utils.io import DataError

FORMATS = {".edf": "EDF/EDF+", ".bdf": "BDF", ".vhdr": "BrainVision", ".fif": "FIF", ".fif.gz": "FIF",
           ".set": "EEGLAB", ".parquet": "Kaggle-style parquet (200 Hz, microvolts)"}
REQUIRED = [EEG_COLUMNS[i] for i in MONTAGE_ELECTRODES]  # the 16 electrodes of the double banana
CHUNK_S = 60  # seconds of output decoded per step: bounds memory whatever the recording's length
# Part of every recording cache key: bump it whenever what a file decodes to changes (channel matching,
# units, resampling, gaps, the cache's layout), so caches written by the old code are never served.
DECODE_VERSION = "3"
SAME_CHECK_S = 10  # seconds compared when two channels read as the same name (a repeated channel)
LOOP_NOTE = 0.05  # a bipolar file's loop mismatch above this share of its channels' RMS is reported
ANNOTATION_COLUMNS = ["onset", "duration", "description"]
electrode_name = chn.electrode_name  # the one normaliser lives in data/channels.py


@dataclass
class ChannelMap:
    """Which source channel feeds each electrode (referential mode), or each double-banana pair and its sign
    (bipolar mode), and which required electrodes are missing."""
    index: dict  # electrode -> channel index in the source
    missing: list
    renamed: dict = field(default_factory=dict)  # electrode (or pair name) -> source label, where they differ
    mode: str = "referential"  # or "bipolar"
    pairs: dict = field(default_factory=dict)  # bipolar: montage index k -> (channel index, +1 or -1)
    notes: list = field(default_factory=list)


def _has(labels) -> str:
    return ", ".join(str(c) for c in labels)


def match_channels(labels, where: str = "recording", allow_missing: bool = False, user_map=None,
                   same=None) -> ChannelMap:
    """Map source channel labels to electrodes (or, without them, to the 16 double-banana pairs).

    Preference among channels naming the same electrode: the user's map, then a label spelled exactly
    as the electrode, then a prefixed/suffixed/aliased one (for a pair: the map, then the montage's
    direction, then a reversed pair); two equal candidates are an error (no silent guess) unless
    `same(candidates)` says they hold the same samples (a channel the file repeats): then the first is
    used. `candidates` is a list of (channel index, sign). A numbered cap layout is refused unless
    `user_map` (data/channels.UserMap) is given: then only the channels it names are used."""
    labels = [str(c) for c in labels]
    numbered = chn.numbered_layout(labels)
    if numbered and user_map is None:
        raise DataError(f"{where}: channel names follow a numbered cap layout, not 10-20 ({numbered}): names there "
                        f"such as C3 or A1 are positions of that cap, not the 10-20 electrodes; {chn.MAP_HELP}")
    parsed, explicit = [], set()
    for i, label in enumerate(labels):
        hit, target = user_map.lookup(label) if user_map is not None else (False, None)
        if hit:
            explicit.add(i)
        elif not numbered:
            target = chn.parse_label(label)
        parsed.append(target)
    # pairs sharing one second electrode (Fp1-Cz, F3-Cz, ...) are referential channels against it
    seconds = pd.Series([p[1] for i, p in enumerate(parsed) if isinstance(p, tuple) and i not in explicit])
    common = seconds.value_counts()
    common = set(common.index[common >= chn.COMMON_REF_MIN])
    for i, p in enumerate(parsed):
        if isinstance(p, tuple) and i not in explicit and p[1] in common:
            parsed[i] = p[0]
    notes = []

    def pick(name, cands):  # cands: [(channel index, sign)]
        top = [c for c in cands if c[0] in explicit]
        if not top and isinstance(name, str):
            top = [c for c in cands if labels[c[0]].strip().upper() == name.upper()]
        if not top and not isinstance(name, str):  # a pair written in the montage's direction wins
            top = [c for c in cands if c[1] > 0]
        top = top or cands
        if len(top) > 1:
            both = ", ".join(repr(labels[i]) for i, _ in top)
            if same is not None and same(top):
                notes.append(f"channels {both} hold the same samples: {labels[top[0][0]]!r} is used")
                return top[0]
            what = f"electrode {name}" if isinstance(name, str) else f"pair {MONTAGE_NAMES[name]}"
            raise DataError(f"{where}: channels {both} all read as {what}; keep one of them "
                            f"(or name them in --channel-map FILE)")
        return top[0]

    found, pair_found = {}, {}
    for i, p in enumerate(parsed):
        if isinstance(p, str):
            found.setdefault(p, []).append((i, 1.0))
        kp = chn.pair_of(p)
        if kp is not None:
            pair_found.setdefault(kp[0], []).append((i, kp[1]))
    index, renamed = {}, {}
    for name, cands in found.items():
        i, _ = pick(name, cands)
        index[name] = i
        if labels[i].strip() != name:
            renamed[name] = labels[i].strip()
    missing = [e for e in REQUIRED if e not in index]
    mapped = f" (after {user_map.path})" if user_map is not None else ""
    if not missing:
        return ChannelMap(index, missing, renamed, notes=notes)
    if len(pair_found) == len(MONTAGE):
        pairs, renamed = {}, {}
        for k in sorted(pair_found):
            pairs[k] = pick(k, pair_found[k])
            if labels[pairs[k][0]].strip() != MONTAGE_NAMES[k]:
                renamed[MONTAGE_NAMES[k]] = labels[pairs[k][0]].strip()
        keep = {e: i for e, i in index.items() if e not in REQUIRED}  # Fz, Cz, Pz, EKG: kept as they are
        return ChannelMap(keep, [], renamed, "bipolar", pairs, notes)
    if pair_found and len(pair_found) >= len(REQUIRED) - len(missing):  # a bipolar file short of some pairs
        absent = [MONTAGE_NAMES[k] for k in range(len(MONTAGE)) if k not in pair_found]
        raise DataError(f"{where}{mapped}: bipolar pair(s) {', '.join(absent)} not found (a bipolar recording needs all "
                        f"16 pairs of the double banana, in either naming or direction; --allow-missing applies to "
                        f"referential electrodes only; {chn.MAP_HELP}); the file has: {_has(labels)}")
    if missing and not allow_missing:
        raise DataError(f"{where}{mapped}: electrode(s) {', '.join(missing)} not found (the double banana needs "
                        f"{', '.join(REQUIRED)}; --allow-missing zeroes their channels; {chn.MAP_HELP}); "
                        f"the file has: {_has(labels)}")
    if len(missing) == len(REQUIRED):
        raise DataError(f"{where}{mapped}: none of the double banana's electrodes found ({chn.MAP_HELP}); "
                        f"the file has: {_has(labels)}")
    return ChannelMap(index, missing, renamed, notes=notes)


# --- sources ------------------------------------------------------------------------------------------
def _no_annotations() -> pd.DataFrame:
    return pd.DataFrame({"onset": np.zeros(0), "duration": np.zeros(0), "description": np.zeros(0, dtype=object)})


@dataclass
class Source:
    """One opened recording: channel labels, rate, length, and read(picks, start, stop) ->
    (stop - start, len(picks)) float64 microvolts at the source's own rate (NaN in its gaps);
    annotations() -> the file's own annotations (onset and duration in seconds from the first sample,
    description), sorted by onset."""
    path: Path
    kind: str
    labels: list
    sfreq: float
    n_samples: int
    read: Callable[[list, int, int], np.ndarray]
    annotations: Callable[[], pd.DataFrame] = _no_annotations
    layout: str = ""  # how the samples were placed, when not simply back to back (EDF+D)
    start: object = None  # datetime of the first sample (UTC), where the file says
    files: tuple = ()  # every file the reader opens (header first); the cache key covers them all

    def __post_init__(self):
        self.files = tuple(dict.fromkeys(Path(f) for f in (self.path, *self.files)))


def suffix(path: Path) -> str:
    name = path.name.lower()
    return ".fif.gz" if name.endswith(".fif.gz") else path.suffix.lower()


def recordings_in(folder) -> tuple[list[Path], int]:
    """The recordings directly in `folder` (a FORMATS suffix, not hidden), sorted by name, and how many
    other entries it holds: sidecar files (.vmrk, .eeg, .fdt, .json, ...) are read through their header,
    and sub-folders are not searched (name one as an input of its own)."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder: {err.strerror or err}") from None
    found = [p for p in entries if not p.name.startswith(".") and suffix(p) in FORMATS and p.is_file()]
    return found, len(entries) - len(found)


def open_source(path) -> Source:
    """Open a recording without reading its samples; one-line DataError for a missing, unsupported
    or unreadable file."""
    path = Path(path)
    ext = suffix(path)
    if ext not in FORMATS:
        raise DataError(f"{path}: unsupported file type {ext or '(none)'!r}; supported: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: recording not found")
    if ext == ".parquet":
        return _open_parquet(path)
    return _open_mne(path, FORMATS[ext])


# EDF+ time-stamped annotation lists (TALs): onset, optional duration, texts (the pattern MNE's EDF reader uses);
# the first TAL of each data record's first annotation signal has no text and gives the record's start in
# seconds after the file's start time (EDF+ specification, "time keeping")
_TAL = re.compile(rb"([+-]\d+\.?\d*)(\x15(\d+\.?\d*))?(\x14.*?)\x14\x00")


@dataclass
class EdfRecords:
    """An EDF+D/BDF+D file's data records: their onsets (s, as written), duration (s), and the file's
    annotations (onset from the first record's start, duration, description)."""
    onsets: np.ndarray
    duration: float
    annotations: pd.DataFrame


def edf_discontinuous_records(path) -> EdfRecords | None:
    """For a discontinuous EDF+/BDF+ file (header "EDF+D"/"BDF+D"), each data record's onset read from
    its time-keeping annotation, and the annotations; None for any other file. Read from the file's bytes
    as the EDF+ specification lays them out (256-byte header, 256 bytes per signal, records of 2- or
    3-byte samples). (MNE reads such a file's records back to back and drops its annotations past that
    shortened length.)"""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(256)
        if len(head) < 256 or head[192:197].upper() not in (b"EDF+D", b"BDF+D"):
            return None
        try:
            n_header, n_records = int(head[184:192]), int(head[236:244])
            duration, ns = float(head[244:252]), int(head[252:256])
            sig = fh.read(ns * 256)
            labels = [sig[i * 16:(i + 1) * 16].decode("latin-1").strip() for i in range(ns)]
            base = ns * (16 + 80 + 8 * 5 + 80)
            n_samp = [int(sig[base + i * 8:base + (i + 1) * 8]) for i in range(ns)]
        except ValueError:
            raise DataError(f"{path}: EDF+D header unreadable (header size, records, duration, signals)") from None
    bps = 3 if head[:1] == b"\xff" else 2
    tals = [i for i, lab in enumerate(labels) if lab in ("EDF Annotations", "BDF Annotations")]
    if not tals:
        raise DataError(f"{path}: EDF+D without an annotations signal: the data records' times are unknown")
    rec_bytes = sum(n_samp) * bps
    size = path.stat().st_size - n_header
    if n_records < 0 or n_records * rec_bytes > size:
        n_records = size // rec_bytes
    data = np.memmap(path, np.uint8, "r", offset=n_header, shape=(n_records, rec_bytes))
    onsets = np.empty(n_records)
    marks = []
    for r in range(n_records):
        for j, t in enumerate(tals):
            off = sum(n_samp[:t]) * bps
            found = _TAL.findall(bytes(data[r, off:off + n_samp[t] * bps]))
            if j == 0:
                if not found:
                    raise DataError(f"{path}: EDF+D data record {r} has no time stamp")
                onsets[r] = float(found[0][0])
                found = found[1:]
            for onset, _, dur, texts in found:
                marks += [(float(onset), float(dur) if dur else 0.0, text.decode("utf-8", "replace"))
                          for text in texts.split(b"\x14")[1:] if text]
    del data
    ann = pd.DataFrame(marks, columns=ANNOTATION_COLUMNS)
    ann["onset"] -= onsets[0] if n_records else 0.0
    return EdfRecords(onsets, duration, _tidy(ann.astype({"onset": float, "duration": float, "description": object})))


def _placed_reader(raw_read, starts_true, starts_file, lengths):
    """read(picks, start, stop) on the true time line from pieces stored back to back: piece i holds file
    samples [starts_file[i], + lengths[i]) that belong at [starts_true[i], + lengths[i]); NaN elsewhere."""
    ends_true = starts_true + lengths

    def read(picks, start, stop):
        out = np.full((max(stop - start, 0), len(picks)), np.nan)
        for i in range(int(np.searchsorted(ends_true, start, "right")), len(starts_true)):
            if starts_true[i] >= stop:
                break
            a, b = max(start, starts_true[i]), min(stop, ends_true[i])
            if b > a:
                f0 = starts_file[i] + a - starts_true[i]
                out[a - start:b - start] = raw_read(picks, f0, f0 + b - a)
        return out

    return read


def _edf_d_layout(path: Path, raw, records: EdfRecords, raw_read):
    """(read on the true time line, its length in samples, a description) for an EDF+D file MNE read as
    records back to back."""
    sfreq = float(raw.info["sfreq"])
    spr = int(round(records.duration * sfreq))
    if spr <= 0 or abs(spr - records.duration * sfreq) > 1e-6:
        raise DataError(f"{path}: EDF+D data record of {records.duration:g} s is not a whole number of samples at "
                        f"{sfreq:g} Hz")
    n_rec = min(len(records.onsets), int(raw.n_times) // spr)
    if n_rec == 0:
        raise DataError(f"{path}: EDF+D without data records")
    t = (records.onsets[:n_rec] - records.onsets[0]) * sfreq
    starts = np.round(t).astype(np.int64)
    span = int(starts[-1]) + spr
    if int(raw.n_times) == span and n_rec * spr != span:
        return None  # the reader already placed the records on their time line (and marked the gaps)
    if np.abs(t - starts).max() > 1e-3:
        raise DataError(f"{path}: EDF+D data record onsets fall between samples at {sfreq:g} Hz")
    back = np.flatnonzero(np.diff(starts) < spr)
    if len(back):
        raise DataError(f"{path}: EDF+D data record {back[0] + 1} starts at {records.onsets[back[0] + 1]:g} s, before "
                        f"the previous one ends")
    new = np.r_[True, np.diff(starts) != spr]  # a record that does not follow its predecessor starts a piece
    first = np.flatnonzero(new)
    lengths = np.diff(np.r_[first, n_rec]) * spr
    starts_file = first * spr
    gaps = len(first) - 1
    missing_s = (span - n_rec * spr) / sfreq
    desc = f"EDF+D: {n_rec} records in {len(first)} piece(s), {gaps} gap(s) of {missing_s:g} s in all"
    return _placed_reader(raw_read, starts[first], starts_file, lengths), span, desc


def _union(spans) -> list:
    """Overlapping or touching (start, stop) spans merged (a FIF's skip is annotated twice when read back)."""
    out = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Annotations sorted by onset, exact repeats dropped."""
    return df.drop_duplicates().sort_values("onset", kind="stable").reset_index(drop=True)


def _mne_annotations(raw) -> Callable[[], pd.DataFrame]:
    def annotations():
        ann = raw.annotations
        df = pd.DataFrame({"onset": np.asarray(ann.onset, np.float64) - float(raw.first_time),
                           "duration": np.asarray(ann.duration, np.float64),
                           "description": [str(d) for d in ann.description]})
        return _tidy(df)

    return annotations


def _open_mne(path: Path, kind: str) -> Source:
    import mne

    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one line
        raise DataError(f"{path}: cannot read as {kind}: {type(err).__name__}: "
                        f"{(str(err).strip().splitlines() or [''])[0]}") from None

    def read_back_to_back(picks, start, stop):
        return raw.get_data(picks=list(picks), start=int(start), stop=int(stop)).T * 1e6  # volts -> uV

    read, n, layout, annotations = read_back_to_back, int(raw.n_times), "", _mne_annotations(raw)
    records = edf_discontinuous_records(path) if suffix(path) in (".edf", ".bdf") else None
    if records is not None:
        placed = _edf_d_layout(path, raw, records, read_back_to_back)
        if placed is not None:
            read, n, layout = placed
            annotations = records.annotations.copy
    # acquisition skips (MNE's BAD_ACQ_SKIP, e.g. a FIF recording's): no signal there, NaN as any gap
    sfreq = float(raw.info["sfreq"])
    ann = raw.annotations
    skips = _union([(int(round((o - raw.first_time) * sfreq)), int(round((o - raw.first_time + d) * sfreq)))
                    for o, d, desc in zip(ann.onset, ann.duration, ann.description)
                    if str(desc).upper() == "BAD_ACQ_SKIP"])
    if skips:
        inner = read

        def read_skipping(picks, start, stop):
            out = inner(picks, start, stop)
            for a, b in skips:
                a, b = max(a, start), min(b, stop)
                if b > a:
                    out[a - start:b - start] = np.nan
            return out

        read = read_skipping

        total = sum(b - a for a, b in skips) / sfreq
        layout = ", ".join(filter(None, [layout, f"{len(skips)} acquisition skip(s) of {total:g} s in all"]))
    meas = raw.info["meas_date"]
    start = meas + datetime.timedelta(seconds=float(raw.first_time)) if meas is not None else None
    files = [*raw.filenames, *brainvision_marker(path)]  # .eeg / .fdt / each FIF part; .vmrk
    return Source(path, kind, list(raw.ch_names), sfreq, n, read, annotations, layout, start,
                  tuple(Path(f) for f in files if f is not None))


def brainvision_marker(path: Path) -> list[Path]:
    """A BrainVision header's marker file (MNE reads its annotations from it); [] for other formats."""
    if suffix(path) != ".vhdr":
        return []
    try:
        text = path.read_text(encoding="latin-1")
    except OSError:
        return []
    m = re.search(r"^\s*MarkerFile\s*=\s*(.+?)\s*$", text, re.M | re.I)
    return [path.parent / m.group(1)] if m else []


def _open_parquet(path: Path) -> Source:
    reader = ParquetEEG(path)

    def read(picks, start, stop):
        return reader.read([reader.columns[p] for p in picks], int(start), int(stop)).astype(np.float64)

    return Source(path, FORMATS[".parquet"], reader.columns, float(FS), reader.n_rows, read)


# --- resampling -------------------------------------------------------------------------------------------
def rate_ratio(sfreq: float) -> tuple[int, int]:
    """(up, down) with FS / sfreq = up / down, reduced."""
    if not sfreq > 0:
        raise DataError(f"sampling rate {sfreq} Hz is not positive")
    r = (Fraction(FS) / Fraction(sfreq)).limit_denominator(2000)
    return r.numerator, r.denominator


def resampled_length(n_in: int, up: int, down: int) -> int:
    return -(-n_in * up // down)


def read_resampled(src: Source, picks, start: int, stop: int) -> np.ndarray:
    """Output samples [start, stop) at FS of the channels `picks`, equal to resample_poly of the whole
    recording: each piece is computed from its input plus a margin wider than the filter's half
    length, starting at a sample where input and output grids meet (so the polyphase phases agree)."""
    up, down = rate_ratio(src.sfreq)
    if up == down == 1:
        return src.read(picks, start, stop)
    a0 = start // up * up  # output sample on the common grid: input sample a0 * down / up
    margin = -(-10 * max(up, down) // up) + 2  # > scipy's filter half length (10 * max(up, down) / up)
    margin = -(-margin // down) * down  # in whole grid steps, so i0 stays on the grid
    i0 = max(a0 * down // up - margin, 0)
    i1 = min(-(-stop * down // up) + margin, src.n_samples)
    y = resample_poly(src.read(picks, i0, i1), up, down, axis=0)
    first = start - i0 * up // down
    return y[first:first + (stop - start)]


# --- decoding -------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """An opened recording and how it maps onto the models' layout."""
    source: Source
    channels: ChannelMap
    n_samples: int  # at FS

    @property
    def seconds(self) -> float:
        return self.n_samples / FS

    @property
    def bipolar(self) -> bool:
        return self.channels.mode == "bipolar"

    def notes(self) -> list[str]:
        """One-line warnings the user should see (missing electrodes, repeated channels, a bipolar file
        whose loops do not close)."""
        name = self.source.path.name
        out = [f"{name}: {n}" for n in self.channels.notes]
        m = self.channels.missing
        if m:
            out.append(f"{name}: electrode(s) {', '.join(m)} missing: the bipolar channels using them "
                       f"are zeros (--allow-missing; the models met zeroed channels in training as channel dropout)")
        if self.bipolar:
            for side, ratio in zip(("left", "right"), self.loop_mismatch()):
                if ratio > LOOP_NOTE:
                    out.append(f"{name}: the {side} bipolar pairs do not close (temporal chain Fp-O minus "
                               f"parasagittal chain Fp-O is {100 * ratio:.0f}% of the channels' RMS), so they do not "
                               f"come from one referential recording: each of the loop's 8 channels is scored with "
                               f"an eighth of that difference moved onto it")
        return out

    def loop_mismatch(self, pieces: int = 30) -> list[float]:
        """data/channels.loop_mismatch over up to `pieces` one-second pieces of the source (bipolar mode)."""
        src, sec = self.source, max(int(round(self.source.sfreq)), 1)
        starts = np.linspace(0, max(src.n_samples - sec, 0), min(pieces, max(src.n_samples // sec, 1))).astype(int)
        y = np.concatenate([self._pairs(src.read, s, s + sec) for s in starts])
        return chn.loop_mismatch(y)

    def _pairs(self, read, start, stop) -> np.ndarray:
        picks = [self.channels.pairs[k][0] for k in range(len(MONTAGE))]
        signs = np.array([self.channels.pairs[k][1] for k in range(len(MONTAGE))])
        return read(picks, start, stop) * signs

    def describe(self) -> str:
        s, c = self.source, self.channels
        renamed = ", ".join(f"{v}->{k}" for k, v in list(c.renamed.items())[:4])
        more = len(c.renamed) - 4
        what = (f"the {len(MONTAGE)} double-banana pairs (bipolar)" if self.bipolar
                else f"{len(REQUIRED) - len(c.missing)}/{len(REQUIRED)} electrodes")
        return (f"{s.path.name}: {s.kind}, {s.sfreq:g} Hz" + (" -> 200 Hz" if s.sfreq != FS else "")
                + f", {hhmmss(self.seconds)}" + (f" ({s.layout})" if s.layout else "") + f", {what}"
                + (f" ({renamed}{f', +{more}' if more > 0 else ''})" if renamed else ""))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at FS as (n, 20) float32 microvolts in EEG_COLUMNS order; absent
        channels (missing electrodes, a missing Fz/Cz/Pz/EKG) are NaN. A bipolar file's montage
        electrodes are the potentials whose montage gives its pairs back (data/channels.py)."""
        stop = min(stop, self.n_samples)
        out = np.full((max(stop - start, 0), len(EEG_COLUMNS)), np.nan, np.float32)
        if stop > start:
            if self.channels.index:
                cols = [EEG_COLUMNS.index(e) for e in self.channels.index]
                out[:, cols] = read_resampled(self.source, list(self.channels.index.values()), start, stop)
            if self.bipolar:
                y = self._pairs(lambda p, a, b: read_resampled(self.source, p, a, b), start, stop)
                out[:, MONTAGE_ELECTRODES] = chn.electrodes_from_pairs(y)
        return out

    def annotations(self) -> pd.DataFrame:
        """The file's own annotations: onset, duration (s from the first sample), description."""
        return self.source.annotations()


def _same_samples(src: Source):
    """same(candidates) for match_channels: whether the channels (index, sign) hold the same first
    SAME_CHECK_S seconds."""
    def same(cands) -> bool:
        n = min(src.n_samples, int(SAME_CHECK_S * src.sfreq))
        x = src.read([i for i, _ in cands], 0, n) * np.array([sg for _, sg in cands])
        return bool(np.array_equal(x, np.repeat(x[:, :1], x.shape[1], axis=1), equal_nan=True))

    return same


def open_recording(path, allow_missing: bool = False, channel_map=None) -> Recording:
    """Open a recording and map its channels; `channel_map`: a data/channels.UserMap or the path of one."""
    src = open_source(path)
    if channel_map is not None and not isinstance(channel_map, chn.UserMap):
        channel_map = chn.read_channel_map(channel_map)
    cmap = match_channels(src.labels, str(src.path), allow_missing, channel_map, _same_samples(src))
    up, down = rate_ratio(src.sfreq)
    n = resampled_length(src.n_samples, up, down)
    if n == 0:
        raise DataError(f"{src.path}: recording has no samples")
    return Recording(src, cmap, n)


def decode(rec: Recording, out_path) -> None:
    """Write the whole recording to a float32 .npy (T, 20) in CHUNK_S pieces. A recording whose
    montage electrodes hold no number at all is an error."""
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(rec.n_samples, len(EEG_COLUMNS)))
    step = CHUNK_S * FS
    any_signal = False
    for start in range(0, rec.n_samples, step):
        block = rec.read(start, start + step)
        out[start:start + len(block)] = block
        any_signal = any_signal or bool(np.isfinite(block[:, MONTAGE_ELECTRODES]).any())
    out.flush()
    del out
    if not any_signal:
        raise DataError(f"{rec.source.path}: recording is NaN throughout (no signal)")


def amplitude_note(rec: np.ndarray, name: str, lo: float = 0.5, hi: float = 5000.0) -> str | None:
    """A warning when the typical amplitude (median absolute deviation of the montage electrodes over
    up to 30 one-second samples of the decoded recording) is far from EEG's tens of microvolts: most
    often a unit the reader did not know (MNE then takes the numbers as volts)."""
    starts = np.linspace(0, max(len(rec) - FS, 0), min(30, max(len(rec) // FS, 1))).astype(int)
    x = np.concatenate([np.asarray(rec[s:s + FS])[:, MONTAGE_ELECTRODES].ravel() for s in starts])
    x = x[np.isfinite(x)]
    mad = float(np.median(np.abs(x - np.median(x)))) if len(x) else 0.0
    if lo <= mad <= hi:
        return None
    return (f"{name}: typical amplitude {mad:.3g} uV, far from EEG's tens of microvolts: check the file's units "
            f"(a unit the reader does not know is taken as volts); the models were trained on microvolts")


def default_cache_dir() -> Path:
    """$HMS_CACHE_DIR/recordings, else ~/.cache/hms3rd/recordings (not next to the user's files)."""
    env = os.environ.get("HMS_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "hms3rd") / "recordings"


class RecordingStore(EEGStore):
    """EEGStore over arbitrary recording files: key i is recordings[i]; its cache file is named after
    the source's name and path and a hash of DECODE_VERSION and the path, size and mtime of every file
    its reader opens (an edited header, data, marker file or FIF part is decoded again), so a second run
    on unchanged files reuses it."""

    def __init__(self, recordings: list, cache_dir):
        self.paths = [r.source.path for r in recordings]
        self.files = [r.source.files for r in recordings]
        self._recordings = list(recordings)  # open readers: decoding happens in the main process
        self.cache_dir = Path(cache_dir)
        self._open = {}

    def __getstate__(self):  # DataLoader workers read the decoded cache only
        return dict(super().__getstate__(), _recordings=None)

    def source(self, eeg_id) -> Path:
        return self.paths[int(eeg_id)]

    def cache_key(self, eeg_id) -> str:
        """DECODE_VERSION and (path, size, mtime_ns) of each file the reader opens, hashed."""
        parts = [f"decode {DECODE_VERSION}"]
        for f in self.files[int(eeg_id)]:
            try:
                st = f.stat()
            except OSError:
                raise DataError(f"{f}: file of recording {self.source(eeg_id)} not found") from None
            parts.append(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}")
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]

    def _prefix(self, eeg_id) -> str:
        src = self.source(eeg_id)
        tag = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:10]
        return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', src.name)}_{tag}"

    def cache_path(self, eeg_id) -> Path:
        return self.cache_dir / f"{self._prefix(eeg_id)}_{self.cache_key(eeg_id)}.npy"

    def decode_to(self, eeg_id, tmp) -> None:
        if self._recordings is None:
            raise RuntimeError("RecordingStore: decode each recording (build) before handing the store to workers")
        decode(self._recordings[int(eeg_id)], tmp)

    def stale_pattern(self, eeg_id) -> str:
        return glob.escape(self._prefix(eeg_id)) + "_*.npy"


def hhmmss(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"

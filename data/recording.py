"""Recordings outside the Kaggle layout: EDF/EDF+, BDF, BrainVision, FIF, EEGLAB (through MNE-Python's
readers) and Kaggle-style parquet of any length, read into the models' layout.

What the models need is 200 Hz microvolt signals of the 16 electrodes of the double banana. So:
- channels are found by name (case-insensitive; `EEG `/`POL ` prefixes and reference suffixes such
  as `-REF`, `-LE`, `-AVG`, `-A1` dropped; T7/T8/P7/P8 read as T3/T4/T5/T6), never by position;
- any sampling rate is resampled to 200 Hz with a polyphase filter (scipy `resample_poly`),
  computed in chunks that reproduce the whole-signal result, so a day-long file never sits in memory;
- MNE reads volts, the models were trained on microvolts: x 1e6 (parquet is microvolts already);
- the result is decoded once into a memory-mapped float32 .npy of (T, 20) in EEG_COLUMNS order
  (NaN kept: the datasets turn NaN into 0 after the montage, as in training) by `RecordingStore`,
  the recording cache of data/eeg_store.py, keyed by every file the reader opens (path, size and
  mtime of the header, the data file and the marker file, or each part of a split FIF) and by
  DECODE_VERSION, so an edited data file or a change of the decoding is decoded again.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.signal import resample_poly

from data.eeg_store import EEGStore, ParquetEEG
from data.signal import EEG_COLUMNS, FS, MONTAGE_ELECTRODES
from utils.io import DataError

FORMATS = {".edf": "EDF/EDF+", ".bdf": "BDF", ".vhdr": "BrainVision", ".fif": "FIF", ".fif.gz": "FIF",
           ".set": "EEGLAB", ".parquet": "Kaggle-style parquet (200 Hz, microvolts)"}
REQUIRED = [EEG_COLUMNS[i] for i in MONTAGE_ELECTRODES]  # the 16 electrodes of the double banana
PREFIXES = {"EEG", "POL"}
REF_SUFFIXES = {"REF", "LE", "RE", "LM", "AVG", "AVE", "AV", "AR", "CAR", "A1", "A2", "M1", "M2", "A1A2", "M1M2",
                "A12", "LINKED"}
ALIASES = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6", "ECG": "EKG"}  # modern 10-10 names -> 10-20
_CANON = {c.upper(): c for c in EEG_COLUMNS}
CHUNK_S = 60  # seconds of output decoded per step: bounds memory whatever the recording's length
# Part of every recording cache key: bump it whenever what a file decodes to changes (channel matching,
# units, resampling, the cache's layout), so caches written by the old code are never served.
DECODE_VERSION = "2"


def electrode_name(label: str) -> str | None:
    """The EEG_COLUMNS electrode a channel label names, or None ("EEG FP1-REF" -> Fp1, "T7" -> T3;
    a bipolar label such as "Fp1-F7" names no single electrode)."""
    tokens = [t for t in re.split(r"[\s\-_:]+", label.strip().upper()) if t]
    while len(tokens) > 1 and tokens[0] in PREFIXES:
        tokens = tokens[1:]
    while len(tokens) > 1 and tokens[-1] in REF_SUFFIXES:
        tokens = tokens[:-1]
    if len(tokens) != 1:
        return None
    return _CANON.get(ALIASES.get(tokens[0], tokens[0]))


@dataclass
class ChannelMap:
    """Which source channel feeds each electrode, and which required electrodes are missing."""
    index: dict  # electrode -> channel index in the source
    missing: list
    renamed: dict = field(default_factory=dict)  # electrode -> source label, where they differ


def match_channels(labels, where: str = "recording", allow_missing: bool = False) -> ChannelMap:
    """Map source channel labels to electrodes; a label spelled exactly as the electrode wins over
    a prefixed/suffixed/aliased one, two equal candidates are an error (no silent guess)."""
    found: dict[str, list] = {}
    for i, label in enumerate(labels):
        name = electrode_name(str(label))
        if name is not None:
            found.setdefault(name, []).append(i)
    index, renamed = {}, {}
    for name, idx in found.items():
        exact = [i for i in idx if str(labels[i]).strip().upper() == name.upper()]
        pick = exact if exact else idx
        if len(pick) > 1:
            both = ", ".join(repr(str(labels[i])) for i in pick)
            raise DataError(f"{where}: channels {both} all read as electrode {name}; keep one of them")
        index[name] = pick[0]
        if str(labels[pick[0]]).strip() != name:
            renamed[name] = str(labels[pick[0]]).strip()
    missing = [e for e in REQUIRED if e not in index]
    if missing and not allow_missing:
        have = ", ".join(str(c) for c in labels)
        raise DataError(f"{where}: electrode(s) {', '.join(missing)} not found (the double banana needs "
                        f"{', '.join(REQUIRED)}; --allow-missing zeroes their channels); the file has: {have}")
    if len(missing) == len(REQUIRED):
        raise DataError(f"{where}: none of the double banana's electrodes found; the file has: "
                        f"{', '.join(str(c) for c in labels)}")
    return ChannelMap(index, missing, renamed)


# --- sources ------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One opened recording: channel labels, rate, length, and read(picks, start, stop) ->
    (stop - start, len(picks)) float64 microvolts at the source's own rate."""
    path: Path
    kind: str
    labels: list
    sfreq: float
    n_samples: int
    read: Callable[[list, int, int], np.ndarray]
    files: tuple = ()  # every file the reader opens (header first); the cache key covers them all

    def __post_init__(self):
        self.files = tuple(dict.fromkeys(Path(f) for f in (self.path, *self.files)))


def suffix(path: Path) -> str:
    name = path.name.lower()
    return ".fif.gz" if name.endswith(".fif.gz") else path.suffix.lower()


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


def _open_mne(path: Path, kind: str) -> Source:
    import mne

    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one line
        raise DataError(f"{path}: cannot read as {kind}: {type(err).__name__}: "
                        f"{(str(err).strip().splitlines() or [''])[0]}") from None

    def read(picks, start, stop):
        return raw.get_data(picks=list(picks), start=int(start), stop=int(stop)).T * 1e6  # volts -> uV

    files = [*raw.filenames, *brainvision_marker(path)]  # .eeg / .fdt / each FIF part; .vmrk
    return Source(path, kind, list(raw.ch_names), float(raw.info["sfreq"]), int(raw.n_times), read,
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

    def notes(self) -> list[str]:
        """One-line warnings the user should see (missing electrodes)."""
        m = self.channels.missing
        if not m:
            return []
        return [f"{self.source.path.name}: electrode(s) {', '.join(m)} missing: the bipolar channels using them "
                f"are zeros (--allow-missing; the models met zeroed channels in training as channel dropout)"]

    def describe(self) -> str:
        s = self.source
        renamed = ", ".join(f"{v}->{k}" for k, v in list(self.channels.renamed.items())[:4])
        more = len(self.channels.renamed) - 4
        return (f"{s.path.name}: {s.kind}, {s.sfreq:g} Hz" + (" -> 200 Hz" if s.sfreq != FS else "")
                + f", {hhmmss(self.seconds)}, {len(REQUIRED) - len(self.channels.missing)}/{len(REQUIRED)} electrodes"
                + (f" ({renamed}{f', +{more}' if more > 0 else ''})" if renamed else ""))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at FS as (n, 20) float32 microvolts in EEG_COLUMNS order; absent
        channels (missing electrodes, a missing Fz/Cz/Pz/EKG) are NaN."""
        stop = min(stop, self.n_samples)
        out = np.full((max(stop - start, 0), len(EEG_COLUMNS)), np.nan, np.float32)
        if stop > start:
            cols = [EEG_COLUMNS.index(e) for e in self.channels.index]
            out[:, cols] = read_resampled(self.source, list(self.channels.index.values()), start, stop)
        return out


def open_recording(path, allow_missing: bool = False) -> Recording:
    src = open_source(path)
    cmap = match_channels(src.labels, str(src.path), allow_missing)
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

"""Decode each EEG parquet once into a memory-mapped .npy, so a 50 s window costs a slice, not a re-read.

The cache key holds the source's size and mtime: a changed recording is decoded again.
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import numpy as np

from data.signal import EEG_COLUMNS
from utils.claim import STALE_S
from utils.io import DataError, atomic_write, remove_stale_temps


class ParquetEEG:
    """The one parquet reader: column names, row count, and rows [start, stop) of any columns as float32,
    read by row group (the last group read is kept: decoding walks through a file in order)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: eeg file not found")
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(self.path)
        except Exception as err:  # noqa: BLE001 - any parse failure becomes one clear line
            raise DataError(f"{self.path}: unreadable parquet: {type(err).__name__}: {str(err).splitlines()[0]}") from None
        md = self._file.metadata
        self.columns = list(self._file.schema_arrow.names)
        self.n_rows = int(md.num_rows)
        self._bounds = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
        self._cache = {}

    def _group(self, g: int, names: tuple) -> np.ndarray:
        if (g, names) not in self._cache:
            self._cache.clear()
            table = self._file.read_row_group(g, columns=list(names))
            self._cache[g, names] = np.stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                                              for n in names], axis=1)
        return self._cache[g, names]

    def read(self, names, start: int = 0, stop: int | None = None) -> np.ndarray:
        names, stop = tuple(names), self.n_rows if stop is None else stop
        b = self._bounds
        parts = [self._group(g, names)[max(start, b[g]) - b[g]:min(stop, b[g + 1]) - b[g]]
                 for g in range(int(np.searchsorted(b, start, "right")) - 1, int(np.searchsorted(b, stop, "left")))]
        return np.concatenate(parts) if parts else np.zeros((0, len(names)), np.float32)


def read_eeg_parquet(path) -> np.ndarray:
    """A whole Kaggle recording as float32 (T, 20) in EEG_COLUMNS order (NaN kept)."""
    reader = ParquetEEG(path)
    missing = [c for c in EEG_COLUMNS if c not in reader.columns]
    if missing:
        raise DataError(f"{reader.path}: missing eeg column(s) {', '.join(missing)}")
    if reader.n_rows == 0:
        raise DataError(f"{reader.path}: eeg file has no rows")
    return reader.read(EEG_COLUMNS)


def default_cache_root(eeg_dir: Path) -> Path:
    """$HMS_CACHE_DIR, else <eeg_dir>/../cache when writable (datamount/cache), else ~/.cache/hms3rd."""
    env = os.environ.get("HMS_CACHE_DIR")
    if env:
        return Path(env)
    parent = eeg_dir.resolve().parent
    # the mode bits, not os.access: root may write anywhere, yet a folder marked read-only stays clean
    if os.access(parent, os.W_OK) and parent.stat().st_mode & stat.S_IWUSR:
        return parent / "cache"
    return Path.home() / ".cache" / "hms3rd"


class EEGStore:
    """Reads windows of the recordings in one folder through a per-recording .npy cache."""

    def __init__(self, eeg_dir, cache_dir=None):
        self.eeg_dir = Path(eeg_dir)
        root = Path(cache_dir) if cache_dir else default_cache_root(self.eeg_dir)
        tag = hashlib.sha1(str(self.eeg_dir.resolve()).encode()).hexdigest()[:10]
        self.cache_dir = root / f"{self.eeg_dir.name}_{tag}"
        self._open = {}  # eeg_id -> memmap, per process (DataLoader workers each keep their own)

    def source(self, eeg_id) -> Path:
        return self.eeg_dir / f"{int(eeg_id)}.parquet"

    def cache_path(self, eeg_id) -> Path:
        src = self.source(eeg_id)
        try:
            st = src.stat()
        except FileNotFoundError:
            raise DataError(f"{src}: eeg file not found") from None
        return self.cache_dir / f"{int(eeg_id)}_{st.st_size}_{st.st_mtime_ns}.npy"

    def decode_to(self, eeg_id, tmp) -> None:
        """Write the recording as a (T, 20) float32 .npy to `tmp` (subclasses read other formats)."""
        data = read_eeg_parquet(self.source(eeg_id))
        with open(tmp, "wb") as fh:
            np.save(fh, data)

    def stale_pattern(self, eeg_id) -> str:
        """Glob of this recording's cache files under any key."""
        return f"{int(eeg_id)}_*.npy"

    def build(self, eeg_id) -> Path:
        """Decode one recording into the cache unless an up-to-date copy is there."""
        path = self.cache_path(eeg_id)
        if not path.exists():
            # temporary files of this recording's decodes killed by SIGKILL (untouched for STALE_S: a live
            # decode writes as it goes) are removed first; they can be gigabytes
            remove_stale_temps(self.cache_dir, time.time() - STALE_S, "." + self.stale_pattern(eeg_id) + ".*.tmp")
            atomic_write(path, lambda tmp: self.decode_to(eeg_id, tmp))
            for stale in self.cache_dir.glob(self.stale_pattern(eeg_id)):
                if stale != path:  # another process may have just written the current key: keep it
                    stale.unlink(missing_ok=True)
        return path

    def recording(self, eeg_id) -> np.ndarray:
        """The whole recording, (T, 20) float32, memory-mapped read-only."""
        key = int(eeg_id)
        arr = self._open.get(key)
        if arr is None:
            arr = np.load(self.build(key), mmap_mode="r")
            if len(self._open) > 512:
                self._open.clear()
            self._open[key] = arr
        return arr

    def length(self, eeg_id) -> int:
        return int(self.recording(eeg_id).shape[0])

    def all_nan(self, eeg_id, columns, chunk: int = 1_000_000) -> bool:
        """Whether `columns` are NaN throughout the recording, read in chunks (a day-long recording
        never becomes one array)."""
        rec = self.recording(eeg_id)
        return all(np.isnan(rec[s:s + chunk][:, columns]).all() for s in range(0, len(rec), chunk))

    def window(self, eeg_id, start: int, length: int) -> np.ndarray:
        """Samples [start, start + length) as a float32 copy (T, 20); shorter if the file ends."""
        rec = self.recording(eeg_id)
        start = max(0, int(start))
        return np.array(rec[start:start + int(length)], dtype=np.float32)

    def __getstate__(self):  # memmaps are not sent to DataLoader workers
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

"""Samples/s of the dataset modules (train and val mode) against a naive loader that re-reads the parquet per sample.

    python scripts/bench_data.py                      # temporary 12-minute random recordings
    python scripts/bench_data.py -C cfg_5a cfg_1 cfg_2a --data-dir datamount --rows 64

The naive loader is the same dataset class with its window store swapped for one that decodes the
whole parquet for every sample (what the decoded-once .npy cache of data/eeg_store.py avoids).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from data.signal import EEG_COLUMNS, FS, LABEL_COLS  # noqa: E402
from engine.build import build_dataset  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.config import load_config  # noqa: E402
from data.eeg_store import read_eeg_parquet  # noqa: E402
from utils.io import read_csv_checked, run_cli  # noqa: E402


class NaiveStore:
    """EEGStore's interface, but every call decodes the whole parquet again."""

    def __init__(self, store):
        self.eeg_dir = store.eeg_dir

    def source(self, eeg_id) -> Path:
        return self.eeg_dir / f"{int(eeg_id)}.parquet"

    def recording(self, eeg_id) -> np.ndarray:
        return read_eeg_parquet(self.source(eeg_id))

    def length(self, eeg_id) -> int:
        return len(self.recording(eeg_id))

    def window(self, eeg_id, start: int, length: int) -> np.ndarray:
        return self.recording(eeg_id)[max(0, int(start)):int(start) + int(length)].copy()


def make_recordings(folder: Path, n_recordings: int, minutes: float, rows_per_eeg: int, seed: int = 0) -> pd.DataFrame:
    """Random EEG recordings (float32, Kaggle columns) and train rows at spread-out offsets."""
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * FS)
    rows = []
    (folder / "train_eegs").mkdir(parents=True, exist_ok=True)
    for i in range(n_recordings):
        eeg_id = 100 + i
        x = (np.cumsum(rng.normal(0, 3, (n, len(EEG_COLUMNS))), axis=0) * 0.2
             + rng.normal(0, 20, (n, len(EEG_COLUMNS)))).astype(np.float32)
        pd.DataFrame(x, columns=EEG_COLUMNS).to_parquet(folder / "train_eegs" / f"{eeg_id}.parquet", index=False)
        for k, off in enumerate(np.linspace(0, n / FS - 50, rows_per_eeg).astype(int)):
            votes = rng.integers(0, 5, 6)
            rows.append(dict(eeg_id=eeg_id, eeg_sub_id=k, eeg_label_offset_seconds=float(off), label_id=eeg_id * 1000 + k,
                             patient_id=i, **{c: int(v) for c, v in zip(LABEL_COLS, votes)}, fold=0))
    return pd.DataFrame(rows)


def rate(ds, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t)


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-C", "--configs", nargs="+", default=["cfg_5a", "cfg_1", "cfg_2a"],
                    help="configs whose dataset module is measured (default: ds_1 via cfg_5a, ds_1a via cfg_1)")
    ap.add_argument("--data-dir", default=None, help="use this data folder's train csv and train_eegs instead")
    ap.add_argument("--rows", type=int, default=200, help="samples timed per dataset and mode")
    ap.add_argument("--naive-rows", type=int, default=10, help="samples timed for the naive loader")
    ap.add_argument("--minutes", type=float, default=12.0, help="length of generated recordings")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        if args.data_dir:
            data_dir = Path(args.data_dir)
            df = read_csv_checked(data_dir / "train.csv", ["eeg_id", "eeg_label_offset_seconds", *LABEL_COLS])
            df = df.sample(n=min(len(df), args.rows), random_state=0)
        else:
            data_dir = tmp / "data"
            df = make_recordings(data_dir, n_recordings=4, minutes=args.minutes, rows_per_eeg=max(1, args.rows // 4))
            print(f"generated 4 recordings of {args.minutes:g} min, {len(df)} rows")
        for name in args.configs:
            cfg = load_config(name)
            cfg.data_dir, cfg.cache_dir = str(data_dir), str(tmp / "cache")
            for mode in ("train", "val"):
                ds = build_dataset(df, cfg, mode)
                t = time.perf_counter()
                for eeg_id in np.unique(ds.eeg_ids):
                    ds.store.build(eeg_id)  # the one-off decode; a real run does it on first use
                build_s = time.perf_counter() - t
                fast = rate(ds, args.rows)
                naive_ds = build_dataset(df, cfg, mode)
                naive_ds.store = NaiveStore(naive_ds.store)
                naive = rate(naive_ds, args.naive_rows)
                print(f"{name} {cfg.dataset:6s} {mode:5s}: {fast:8.1f} samples/s ({1000 / fast:6.2f} ms/sample) | "
                      f"naive re-read {naive:6.1f} samples/s | speed-up {fast / naive:6.1f}x | cache build {build_s:.2f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))

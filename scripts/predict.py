"""Inference: every trained run of every blended config -> a Kaggle submission, or a probability
timeline for each of your own recordings.

    python scripts/predict.py [--data-dir datamount] [--out submission.csv] [--output-dir output]
                              [--blend output/blend_weights.json] [--device auto] [--batch-size 16]
    python scripts/predict.py --recording FILE [FILE ...] [--stride 10] [--out-dir predictions]
                              [--allow-missing] [--output-dir output] ...

Kaggle layout: for each eeg of <data_dir>/test.csv (a 50 s recording in <data_dir>/test_eegs/; a
longer one is scored on its first 50 s, a shorter one zero-padded, each with a warning): each run folder
<output_dir>/<cfg>/fold*/seed*/ (folds 0-3 and the fold -1 full fits) is rebuilt from its config.json
(pretrained weights off: the checkpoint holds them) and run in validation mode (no augmentation,
label centre 5000); a config's logits are the mean over its runs; the blend weights and class bias
of blend_weights.py combine the configs; softmax gives the probabilities. The submission is checked
(ids, columns, rows summing to 1) before it is written. Needs no network.

--recording: EDF/EDF+, BDF, BrainVision (.vhdr), FIF, EEGLAB (.set) or Kaggle-style parquet of any
length and rate (data/recording.py reads, maps the channels by name and resamples to 200 Hz), scored
in 50 s windows every --stride seconds with the same runs and blend; per recording it writes
<name>_windows.csv and <name>_timeline.png into --out-dir and prints a summary line.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from data import recording  # noqa: E402
from data.base import eeg_dir_for  # noqa: E402
from data.eeg_store import EEGStore  # noqa: E402
from data.signal import FS, LABEL_COLS, WINDOW  # noqa: E402
from utils import blend, timeline  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils.build import build_dataset, build_model  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import DataError, atomic_write_csv, read_csv_checked, require_dir, run_cli, warn  # noqa: E402
from utils.metric import softmax  # noqa: E402

# fields of a run's config that cannot change its test-time inputs: runs differing only in these
# share one pass over the data (a run with any other difference gets its own pass)
RUN_ONLY_KEYS = {"fold", "seed", "output_dir", "epochs", "lr", "batch_size", "batch_size_val", "grad_accumulation",
                 "clip_grad", "eval_epochs", "curr_epoch", "num_workers", "max_train_rows", "max_val_rows",
                 "neptune_project", "neptune_mode", "pretrained", "pretrained_weights", "mixed_precision", "cpu_amp"}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="datamount", help="folder with test.csv and test_eegs/")
    p.add_argument("--out", default="submission.csv", help="submission file to write")
    p.add_argument("--output-dir", default="output", help="training runs: <output_dir>/<cfg>/fold<f>/seed<s>/")
    p.add_argument("--blend", default=None, help="blend weights JSON (default <output_dir>/blend_weights.json)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=16, help="recordings (--recording: windows) per forward pass")
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--cache-dir", default=None,
                   help="decoded-recording cache (default: <data_dir>/cache, or ~/.cache/hms3rd when read-only; "
                        "--recording: $HMS_CACHE_DIR/recordings or ~/.cache/hms3rd/recordings)")
    g = p.add_argument_group("your own recordings")
    g.add_argument("--recording", nargs="+", default=None, metavar="FILE",
                   help=f"score these files instead of the Kaggle layout ({', '.join(recording.FORMATS)})")
    g.add_argument("--stride", type=float, default=10.0, help="seconds between 50 s windows (10: the central 10 s tile)")
    g.add_argument("--out-dir", default="predictions", help="where <name>_windows.csv and <name>_timeline.png go")
    g.add_argument("--allow-missing", action="store_true",
                   help="score a recording that lacks some montage electrodes (their channels become zeros)")
    args = p.parse_args(argv)
    if not args.stride > 0:
        p.error(f"--stride must be > 0 seconds, got {args.stride}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def load_model(run_dir: Path, cfg, device) -> torch.nn.Module:
    path = Path(run_dir) / ckpt.FINAL
    model = build_model(cfg)
    try:
        ckpt.load_model_weights(model, path)
    except RuntimeError as err:
        raise DataError(f"{path}: checkpoint does not fit the model of its config.json: "
                        f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval()


def _signature(cfg) -> str:
    # "_run" and other private keys are train.py's notes about the run (rows, device), not settings
    return json.dumps({k: v for k, v in sorted(vars(cfg).items()) if k not in RUN_ONLY_KEYS and not k.startswith("_")},
                      default=str)


def config_logits(runs, df, device, batch_size=16, num_workers=0, progress=None, store=None) -> np.ndarray:
    """Mean logits (N, 6) of one config's runs [(run_dir, cfg), ...] on the rows of df, in order
    (validation mode: no augmentation). `store` replaces the Kaggle folder's recordings (--recording)."""
    groups: dict[str, list] = {}
    for run, cfg in runs:
        groups.setdefault(_signature(cfg), []).append((run, cfg))
    total = np.zeros((len(df), len(LABEL_COLS)))
    for members in groups.values():
        models = [load_model(run, cfg, device) for run, cfg in members]
        ds = build_dataset(df, members[0][1], mode="test")
        if store is not None:
            ds.store = store
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        row = 0
        with torch.inference_mode():
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "target"}
                n = len(batch["input"])
                for model in models:
                    total[row:row + n] += model(batch)["logits"].float().cpu().numpy()
                row += n
                if progress is not None:
                    progress.update(n * len(models))
        del models
    return total / len(runs)


def load_ensemble(output_dir, blend_path, data_dir, cache_dir=None) -> tuple[dict, dict]:
    """(blend weights, {config: [(run_dir, cfg), ...]}): every blended config's finished runs, each
    run's config read before any model runs, so a broken folder fails fast."""
    blend_path = Path(blend_path) if blend_path else Path(output_dir) / blend.BLEND_FILE
    weights = blend.load_blend(blend_path)
    dirs = {cfg: ckpt.finished_runs(output_dir, cfg) for cfg in weights["weights"]}
    missing = [cfg for cfg, r in dirs.items() if not r]
    if missing:
        raise DataError(f"{output_dir}: no checkpoints for {', '.join(missing)} (expected "
                        f"<output_dir>/<cfg>/fold*/seed*/checkpoint.pth; the blend file {blend_path} uses them)")
    runs = {cfg: [(d, ckpt.load_run_config(d, data_dir, cache_dir)) for d in ds] for cfg, ds in dirs.items()}
    return weights, runs


def ensemble_probs(weights, runs, df, device, batch_size=16, num_workers=0, store=None, desc="predict",
                   unit="rec*run") -> tuple[np.ndarray, dict]:
    """The one place for the blend: (probabilities (N, 6), each config's mean logits) on df's rows."""
    n_runs = sum(len(r) for r in runs.values())
    logits = {}
    with tqdm(total=len(df) * n_runs, desc=desc, unit=unit, disable=None) as bar:
        for cfg, members in runs.items():
            bar.set_postfix_str(cfg)
            logits[cfg] = config_logits(members, df, device, batch_size, num_workers, bar, store)
    names = list(logits)
    blended = blend.blend_logits(np.stack([logits[c] for c in names], axis=2),
                                 [weights["weights"][c] for c in names], weights["bias"])
    return softmax(blended), logits


def check_submission(sub: pd.DataFrame, ids, columns, where: str = "submission") -> None:
    """Kaggle's rules: the expected columns, one row per test id, finite probabilities summing to 1."""
    if list(sub.columns) != list(columns):
        raise DataError(f"{where}: columns {list(sub.columns)} differ from {list(columns)}")
    if sub["eeg_id"].duplicated().any() or set(sub["eeg_id"]) != set(ids) or len(sub) != len(set(ids)):
        raise DataError(f"{where}: eeg_ids do not match test.csv ({len(sub)} rows, {len(set(ids))} test eegs)")
    p = sub[LABEL_COLS].to_numpy(np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError(f"{where}: probabilities outside [0, 1] or not finite")
    worst = float(np.abs(p.sum(axis=1) - 1).max())
    if worst > 1e-6:
        raise DataError(f"{where}: a row sums to 1 {worst:+.2e}")


def warn_test_lengths(test_df, cfg, cache_dir=None) -> None:
    """Kaggle's test recordings are exactly 50 s: say so when one is not (first 50 s scored / padded)."""
    store = EEGStore(eeg_dir_for(cfg, "test"), cache_dir)
    for eeg_id in test_df["eeg_id"]:
        n = store.length(eeg_id)
        if n > WINDOW:
            warn(f"eeg {eeg_id}: {n / FS:.1f} s long; only its first 50 s is scored (Kaggle's test files are "
                 f"exactly 50 s; `--recording {store.source(eeg_id)}` scores all of it)")
        elif n < WINDOW:
            warn(f"eeg {eeg_id}: {n / FS:.1f} s long, shorter than the 50 s window: zero-padded by "
                 f"{(WINDOW - n) / FS:.1f} s")


def predict(data_dir, output_dir, blend_path=None, device="auto", batch_size=16, num_workers=0,
            cache_dir=None) -> tuple[pd.DataFrame, dict]:
    """The submission frame (sample_submission's columns and order) and each config's mean logits."""
    data_dir = require_dir(data_dir)
    weights, runs = load_ensemble(output_dir, blend_path, data_dir, cache_dir)
    test = read_csv_checked(data_dir / "test.csv", required=["eeg_id"], what="test.csv")
    if test.empty:
        raise DataError(f"{data_dir / 'test.csv'}: no rows")
    test_df = test.drop_duplicates("eeg_id").reset_index(drop=True)
    sample_path = data_dir / "sample_submission.csv"
    if sample_path.is_file():
        sample = read_csv_checked(sample_path, required=["eeg_id", *LABEL_COLS], what="sample submission")
        columns, order = list(sample.columns), sample["eeg_id"].to_numpy()
        if set(order) != set(test_df["eeg_id"]):
            raise DataError(f"{sample_path}: eeg_ids differ from test.csv")
    else:
        columns, order = ["eeg_id", *LABEL_COLS], test_df["eeg_id"].to_numpy()
    dev = resolve_device(device)
    n_runs = sum(len(r) for r in runs.values())
    print(f"{len(test_df)} recording(s), {len(runs)} config(s), {n_runs} run(s), device {dev}")
    warn_test_lengths(test_df, next(iter(runs.values()))[0][1], cache_dir)
    probs, logits = ensemble_probs(weights, runs, test_df, dev, batch_size, num_workers)
    sub = pd.DataFrame(probs, columns=LABEL_COLS)
    sub.insert(0, "eeg_id", test_df["eeg_id"].to_numpy())
    sub = sub.set_index("eeg_id").loc[order].reset_index()[columns]
    check_submission(sub, test_df["eeg_id"], columns)
    return sub, logits


def output_name(path: Path) -> str:
    """rec.edf -> rec; rec.fif.gz -> rec."""
    return path.name[: -len(recording.suffix(path))] if recording.suffix(path) else path.name


def predict_recordings(files, output_dir, blend_path=None, out_dir="predictions", stride=10.0, device="auto",
                       batch_size=16, num_workers=0, cache_dir=None, allow_missing=False) -> dict:
    """Score each file in 50 s windows every `stride` s: {file: window table}; writes the csv and png."""
    recs = [recording.open_recording(f, allow_missing) for f in files]  # every header checked first
    names = [output_name(r.source.path) for r in recs]
    if len(set(names)) < len(names):
        raise DataError(f"two recordings share an output name ({', '.join(names)}): score them separately")
    weights, runs = load_ensemble(output_dir, blend_path, Path(files[0]).parent, cache_dir)
    store = recording.RecordingStore(recs, cache_dir or recording.default_cache_dir())
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
    dev = resolve_device(device)
    n_runs = sum(len(r) for r in runs.values())
    print(f"{len(recs)} recording(s), {len(windows)} window(s), {len(runs)} config(s), {n_runs} run(s), device {dev}")
    t0 = time.perf_counter()
    probs, _ = ensemble_probs(weights, runs, windows, dev, batch_size, num_workers, store, "windows", "win*run")
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


def main(argv=None):
    args = parse_args(argv)
    if args.recording:
        return predict_recordings(args.recording, args.output_dir, args.blend, args.out_dir, args.stride, args.device,
                                  args.batch_size, args.num_workers, args.cache_dir, args.allow_missing)
    t0 = time.perf_counter()
    sub, _ = predict(args.data_dir, args.output_dir, args.blend, args.device, args.batch_size, args.num_workers,
                     args.cache_dir)
    atomic_write_csv(args.out, sub)
    print(f"wrote {args.out}: {len(sub)} row(s) in {time.perf_counter() - t0:.1f} s")
    return sub


if __name__ == "__main__":
    sys.exit(run_cli(main))

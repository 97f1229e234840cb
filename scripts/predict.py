"""Inference on new recordings (SPEC 10): every trained run of every blended config -> submission.csv.

    python scripts/predict.py [--data-dir datamount] [--out submission.csv] [--output-dir output]
                              [--blend output/blend_weights.json] [--device auto] [--batch-size 16]

For each eeg of <data_dir>/test.csv (a 50 s recording in <data_dir>/test_eegs/): each run folder
<output_dir>/<cfg>/fold*/seed*/ (folds 0-3 and the fold -1 full fits) is rebuilt from its config.json
(pretrained weights off: the checkpoint holds them) and run in validation mode (no augmentation,
label centre 5000); a config's logits are the mean over its runs; the blend weights and class bias
of blend_weights.py combine the configs; softmax gives the probabilities. The submission is checked
(ids, columns, rows summing to 1) before it is written. Needs no network.
"""
from __future__ import annotations

import argparse
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

from data.signal import LABEL_COLS  # noqa: E402
from utils import blend  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils.build import build_dataset, build_model  # noqa: E402
from utils.io import DataError, atomic_write_csv, read_csv_checked, require_dir, run_cli  # noqa: E402
from utils.metric import softmax  # noqa: E402

# fields of a run's config that cannot change its test-time inputs: runs differing only in these
# share one pass over the data (a run with any other difference gets its own pass)
RUN_ONLY_KEYS = {"fold", "seed", "output_dir", "epochs", "lr", "batch_size", "batch_size_val", "grad_accumulation",
                 "clip_grad", "eval_epochs", "curr_epoch", "num_workers", "max_train_rows", "max_val_rows",
                 "neptune_project", "neptune_mode", "pretrained", "pretrained_weights", "mixed_precision", "cpu_amp"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="datamount", help="folder with test.csv and test_eegs/")
    p.add_argument("--out", default="submission.csv", help="submission file to write")
    p.add_argument("--output-dir", default="output", help="training runs: <output_dir>/<cfg>/fold<f>/seed<s>/")
    p.add_argument("--blend", default=None, help="blend weights JSON (default <output_dir>/blend_weights.json)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=16, help="recordings per forward pass")
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--cache-dir", default=None,
                   help="decoded-recording cache (default: <data_dir>/cache, or ~/.cache/hms3rd when read-only)")
    return p.parse_args(argv)


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


def config_logits(runs, test_df, device, batch_size=16, num_workers=0, progress=None) -> np.ndarray:
    """Mean logits (N, 6) of one config's runs [(run_dir, cfg), ...] on the test rows, in test_df order."""
    groups: dict[str, list] = {}
    for run, cfg in runs:
        groups.setdefault(_signature(cfg), []).append((run, cfg))
    total = np.zeros((len(test_df), len(LABEL_COLS)))
    for members in groups.values():
        models = [load_model(run, cfg, device) for run, cfg in members]
        ds = build_dataset(test_df, members[0][1], mode="test")
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


def predict(data_dir, output_dir, blend_path=None, device="auto", batch_size=16, num_workers=0,
            cache_dir=None) -> tuple[pd.DataFrame, dict]:
    """The submission frame (sample_submission's columns and order) and each config's mean logits."""
    data_dir = require_dir(data_dir)
    blend_path = Path(blend_path) if blend_path else Path(output_dir) / blend.BLEND_FILE
    weights = blend.load_blend(blend_path)
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
    dirs = {cfg: ckpt.finished_runs(output_dir, cfg) for cfg in weights["weights"]}
    missing = [cfg for cfg, r in dirs.items() if not r]
    if missing:
        raise DataError(f"{output_dir}: no checkpoints for {', '.join(missing)} (expected "
                        f"<output_dir>/<cfg>/fold*/seed*/checkpoint.pth; the blend file {blend_path} uses them)")
    # every run's config is read before any model runs, so a broken folder fails fast
    runs = {cfg: [(d, ckpt.load_run_config(d, data_dir, cache_dir)) for d in ds] for cfg, ds in dirs.items()}
    dev = resolve_device(device)
    n_runs = sum(len(r) for r in runs.values())
    print(f"{len(test_df)} recording(s), {len(runs)} config(s), {n_runs} run(s), device {dev}")
    logits = {}
    with tqdm(total=len(test_df) * n_runs, desc="predict", unit="rec*run", disable=None) as bar:
        for cfg, members in runs.items():
            bar.set_postfix_str(cfg)
            logits[cfg] = config_logits(members, test_df, dev, batch_size, num_workers, bar)
    names = list(logits)
    blended = blend.blend_logits(np.stack([logits[c] for c in names], axis=2),
                                 [weights["weights"][c] for c in names], weights["bias"])
    probs = softmax(blended)
    sub = pd.DataFrame(probs, columns=LABEL_COLS)
    sub.insert(0, "eeg_id", test_df["eeg_id"].to_numpy())
    sub = sub.set_index("eeg_id").loc[order].reset_index()[columns]
    check_submission(sub, test_df["eeg_id"], columns)
    return sub, logits


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    t0 = time.perf_counter()
    sub, _ = predict(args.data_dir, args.output_dir, args.blend, args.device, args.batch_size, args.num_workers,
                     args.cache_dir)
    atomic_write_csv(args.out, sub)
    print(f"wrote {args.out}: {len(sub)} row(s) in {time.perf_counter() - t0:.1f} s")
    return sub


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Picture of one recording as a model sees it: the 16 bipolar channels after the config's dataset
processing (band-pass, clip, scale) with the labelled central 10 s marked, and the model input image.

    python scripts/plot_sample.py --eeg-id ID [--data-dir datamount] [--config cfg_5a] [--out file.png]
                                  [--label-id LID] [--output-dir output]

The eeg is looked up in test.csv (a 50 s test recording) and else in train.csv (the row --label-id, by
default the eeg's first row). With --output-dir holding a trained run of the config, that run's
resolved config.json is used (e.g. the demo's smaller mel images); otherwise the config module's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from data.signal import CLASSES, FS, LABEL_COLS, MONTAGE_NAMES  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils.build import build_dataset, build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.io import DataError, read_csv_checked, require_dir, run_cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eeg-id", type=int, required=True)
    p.add_argument("--data-dir", default="datamount")
    p.add_argument("--config", default="cfg_5a", help="whose dataset processing and input image to show")
    p.add_argument("--label-id", type=int, default=None, help="train row to show (default: the eeg's first)")
    p.add_argument("--output-dir", default=None, help="training runs; a run of --config there gives its config.json")
    p.add_argument("--out", default=None, help="PNG to write (default sample_<eeg_id>_<config>.png)")
    return p.parse_args(argv)


def find_row(data_dir: Path, eeg_id: int, label_id=None) -> tuple[pd.DataFrame, str]:
    """(one-row frame, dataset mode): test.csv first (offset 0), then train.csv."""
    test_csv = data_dir / "test.csv"
    if label_id is None and test_csv.is_file():
        test = read_csv_checked(test_csv, ["eeg_id"], "test.csv")
        if (test["eeg_id"] == eeg_id).any():
            return test[test["eeg_id"] == eeg_id].head(1), "test"
    train_csv = data_dir / "train.csv"
    if train_csv.is_file():
        train = read_csv_checked(train_csv, ["eeg_id", "label_id", "eeg_label_offset_seconds", *LABEL_COLS],
                                 "train.csv")
        rows = train[train["eeg_id"] == eeg_id]
        if label_id is not None:
            rows = rows[rows["label_id"] == label_id]
        if len(rows):
            return rows.head(1), "val"
    what = f"eeg_id {eeg_id}" + (f" with label_id {label_id}" if label_id is not None else "")
    raise DataError(f"{data_dir}: {what} is in neither test.csv nor train.csv")


def plot_config(name: str, data_dir: Path, output_dir=None):
    if output_dir:
        runs = ckpt.finished_runs(output_dir, name)
        if runs:
            return ckpt.load_run_config(runs[0], data_dir)
    cfg = load_config(name)
    cfg.pretrained, cfg.data_dir = False, str(data_dir)
    return cfg


def draw(x: np.ndarray, center: int, image, title: str, image_title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if image is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(13, 9 if rows == 2 else 6),
                             gridspec_kw={"height_ratios": [3, 2] if rows == 2 else [1]}, squeeze=False)
    ax = axes[0, 0]
    t = np.arange(len(x)) / FS
    spread = max(float(np.percentile(np.abs(x), 99)) * 2.2, 1e-3)
    for ch in range(x.shape[1]):
        ax.plot(t, x[:, ch] - ch * spread, lw=0.5, color="#1f4e79" if ch % 2 == 0 else "#9c2f2f")
    lo, hi = (center - 5 * FS) / FS, (center + 5 * FS) / FS
    ax.axvspan(lo, hi, color="#f2c14e", alpha=0.25, label="labelled central 10 s")
    ax.set_yticks([-ch * spread for ch in range(x.shape[1])], MONTAGE_NAMES, fontsize=8)
    ax.set_xlim(0, t[-1])
    ax.set_xlabel("time in the 50 s window (s); blue = left, red = right hemisphere")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    if image is not None:
        ax2 = axes[1, 0]
        im = ax2.imshow(image, aspect="auto", origin="upper", cmap="magma", interpolation="nearest")
        ax2.set_title(image_title, fontsize=10)
        ax2.set_xlabel("spectrogram frame")
        ax2.set_ylabel("16 channels x mel bins")
        fig.colorbar(im, ax=ax2, fraction=0.02, pad=0.01, label="dB")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    args = parse_args(argv)
    data_dir = require_dir(args.data_dir)
    row, mode = find_row(data_dir, args.eeg_id, args.label_id)
    cfg = plot_config(args.config, data_dir, args.output_dir)
    item = build_dataset(row, cfg, mode=mode)[0]
    x, center = item["input"].numpy(), int(item["center"])
    if mode == "test":
        title = f"eeg {args.eeg_id} (test recording), {cfg.name} processing ({cfg.dataset})"
    else:
        r = row.iloc[0]
        votes = r[LABEL_COLS].to_numpy(float)
        shares = ", ".join(f"{c} {v / votes.sum():.2f}" for c, v in zip(CLASSES, votes) if v > 0)
        title = (f"eeg {args.eeg_id}, label_id {int(r['label_id'])}, offset {r['eeg_label_offset_seconds']:.0f} s; "
                 f"votes: {shares}; {cfg.name} processing ({cfg.dataset})")
    model = build_model(cfg).eval()
    image, image_title = None, ""
    if hasattr(model, "make_image"):
        with torch.no_grad():
            img = model.make_image({"input": item["input"][None], "center": item["center"][None]})[0]
        image = img[0].float().numpy()
        image_title = (f"{cfg.name} model input ({cfg.model}): image {tuple(img.shape)}"
                       + (", channel 0 of the 3 views shown" if img.shape[0] > 1 else ""))
    else:
        print(f"note: {cfg.model} reads the raw signal (no image); plotting the channels only")
    out = Path(args.out) if args.out else Path(f"sample_{args.eeg_id}_{cfg.name}.png")
    draw(x, center, image, title, image_title, out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))

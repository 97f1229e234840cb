"""Picture of one 50 s window as a model sees it: the 16 bipolar channels after the config's dataset
processing (band-pass, clip, scale; with an amplitude scale bar) with the labelled central 10 s
marked, and the model input image (for cfg_4/cfg_5 with the spliced-in zoom of the centre marked).

    python scripts/plot_sample.py --eeg-id ID [--data-dir datamount] [--config cfg_5a] [--out file.png]
                                  [--label-id LID] [--start SECONDS] [--output-dir output]
    python scripts/plot_sample.py --recording FILE [--start SECONDS] [--allow-missing] [--config cfg_5a] ...

The eeg is looked up in test.csv (a 50 s test recording) and else in train.csv (the row --label-id, by
default the eeg's first row); --start picks any other 50 s window of it. --recording reads one of your
own files (EDF, BDF, BrainVision, FIF, EEGLAB, parquet; see data/recording.py), only the window shown.
With --output-dir holding a trained run of the config, that run's resolved config.json is used (e.g.
the demo's smaller mel images); otherwise the config module's.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from data import recording  # noqa: E402
from data.signal import CLASSES, FS, LABEL_COLS, MONTAGE_NAMES, WINDOW  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from inference.timeline import nice_number  # noqa: E402
from engine.build import build_dataset, build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.io import DataError, read_csv_checked, require_dir, run_cli  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--eeg-id", type=int, help="an eeg of the Kaggle layout in --data-dir")
    src.add_argument("--recording", help="one of your own recording files instead")
    p.add_argument("--start", type=float, default=None,
                   help="window start in seconds (default: the row's label offset; --recording: 0)")
    p.add_argument("--allow-missing", action="store_true", help="--recording: zero the channels of absent electrodes")
    p.add_argument("--data-dir", default="datamount")
    p.add_argument("--config", default="cfg_5a", help="whose dataset processing and input image to show")
    p.add_argument("--label-id", type=int, default=None, help="train row to show (default: the eeg's first)")
    p.add_argument("--output-dir", default=None, help="training runs; a run of --config there gives its config.json")
    p.add_argument("--out", default=None, help="PNG to write (default sample_<eeg_id or name>_<config>.png)")
    return p.parse_args(argv)


def find_row(data_dir: Path, eeg_id: int, label_id=None, start=None) -> tuple[pd.DataFrame, str, bool]:
    """(one-row frame, dataset mode, whether its votes describe the window): test.csv first (offset 0),
    then train.csv (the row at offset `start` when there is one). With `start` the frame's offset is
    set to it."""
    test_csv = data_dir / "test.csv"
    row, mode = None, None
    if label_id is None and test_csv.is_file():
        test = read_csv_checked(test_csv, ["eeg_id"], "test.csv")
        if (test["eeg_id"] == eeg_id).any():
            row, mode = test[test["eeg_id"] == eeg_id].head(1).copy(), "test"
    train_csv = data_dir / "train.csv"
    if row is None and train_csv.is_file():
        train = read_csv_checked(train_csv, ["eeg_id", "label_id", "eeg_label_offset_seconds", *LABEL_COLS],
                                 "train.csv")
        rows = train[train["eeg_id"] == eeg_id]
        if label_id is not None:
            rows = rows[rows["label_id"] == label_id]
        if start is not None and (rows["eeg_label_offset_seconds"] == start).any():
            rows = rows[rows["eeg_label_offset_seconds"] == start]
        if len(rows):
            row, mode = rows.head(1).copy(), "val"
    if row is None:
        what = f"eeg_id {eeg_id}" + (f" with label_id {label_id}" if label_id is not None else "")
        raise DataError(f"{data_dir}: {what} is in neither test.csv nor train.csv")
    labelled = mode == "val" and (start is None or float(row["eeg_label_offset_seconds"].iloc[0]) == start)
    if start is not None:
        row["eeg_label_offset_seconds"] = float(start)
    return row, mode, labelled


def plot_config(name: str, data_dir: Path, output_dir=None):
    if output_dir:
        runs = ckpt.finished_runs(output_dir, name)
        if runs:
            return ckpt.load_run_config(runs[0], data_dir)
    cfg = load_config(name)
    cfg.pretrained, cfg.data_dir = False, str(data_dir)
    return cfg


def draw(x: np.ndarray, center: int, image, title: str, image_title: str, out: Path, uv_per_unit: float = 1.0,
         zoom=None, zoom_note: str = "") -> Path:
    """Traces (with a scale bar in microvolts: the model's input is uV / uv_per_unit) above the image;
    `zoom` = (first, end) image columns of the spliced-in zoom, outlined so its darker dB level
    reads as a different resolution, not as low power."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = 2 if image is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(13, 9 if rows == 2 else 6),
                             gridspec_kw={"height_ratios": [3, 2] if rows == 2 else [1]}, squeeze=False)
    ax = axes[0, 0]
    t = np.arange(len(x)) / FS
    spread = max(float(np.percentile(np.abs(x), 99)) * 2.2, 1e-3)
    for ch in range(x.shape[1]):
        ax.plot(t, x[:, ch] - ch * spread, lw=0.5, color="#1f4e79" if ch % 2 == 0 else "#9c2f2f")
    lo, hi = (center - 5 * FS) / FS, (center + 5 * FS) / FS
    ax.axvspan(lo, hi, color="#f2c14e", alpha=0.25, label="central 10 s (what a label describes)")
    bar_uv = nice_number(0.8 * spread * uv_per_unit)
    x0 = t[-1] * 1.008
    ax.plot([x0, x0], [0.4 * spread, 0.4 * spread - bar_uv / uv_per_unit], color="k", lw=2, clip_on=False)
    ax.text(x0 + t[-1] * 0.004, 0.4 * spread - bar_uv / uv_per_unit / 2, f"{bar_uv:g} µV", fontsize=8,
            va="center", rotation=90)
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
        if zoom is not None:
            a, b = zoom
            ax2.add_patch(Rectangle((a - 0.5, -0.5), b - a, image.shape[0], fill=False, ec="#00e5ff", lw=1.5))
            ax2.text((a + b) / 2, 0.03 * image.shape[0], zoom_note, color="white", fontsize=8, ha="center", va="top",
                     bbox=dict(facecolor="black", alpha=0.6, lw=0, pad=2))
            ax2.set_xlabel("spectrogram frame (outlined: the zoom's frames, finer in time than the rest)")
        fig.colorbar(im, ax=ax2, fraction=0.02, pad=0.01, label="dB")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def zoom_columns(model, batch) -> tuple[int, int] | None:
    """Image columns [first, end) that mdl_4 fills with its zoom on the label centre (None for others)."""
    if not hasattr(model, "mel_center"):
        return None
    from models.mdl_4 import splice_starts

    x, center = batch["input"].transpose(1, 2), batch["center"]
    with torch.no_grad():
        w = model.mel(x).shape[-1]
        wz = model.mel_center(model.crop_center(x, center)).shape[-1]
    first = int(splice_starts(center, w, model.half_cut(w), x.shape[-1])[0])
    return first, first + wz


def recording_item(args, cfg) -> tuple[dict, str]:
    """The --recording window as a dataset item (the config's processing), and its title."""
    rec = recording.open_recording(args.recording, args.allow_missing)
    start_s = args.start or 0.0
    start = int(round(start_s * FS))
    if not 0 <= start < rec.n_samples:
        raise DataError(f"{args.recording}: --start {start_s:g} s is outside the recording (0 to {rec.seconds:.1f} s)")
    x = rec.read(start, start + WINDOW)
    if len(x) < WINDOW:  # the end of the recording: zero-padded as in scoring
        x = np.concatenate([x, np.full((WINDOW - len(x), x.shape[1]), np.nan, np.float32)])
    ds = build_dataset(pd.DataFrame({"eeg_id": [0]}), cfg, mode="test")
    out = ds.transform(x, WINDOW // 2, None, 0)
    item = {"input": out["input"], "center": torch.tensor(out.get("_center", WINDOW // 2))}
    title = (f"{rec.source.path.name}, window {recording.hhmmss(start_s)} + 50 s of {recording.hhmmss(rec.seconds)}; "
             f"{cfg.name} processing ({cfg.dataset})")
    return item, title


def eeg_item(args, cfg, data_dir: Path) -> tuple[dict, str]:
    """A Kaggle-layout eeg's window as a dataset item, and its title (votes when a train row is there)."""
    row, mode, labelled = find_row(data_dir, args.eeg_id, args.label_id, args.start)
    item = build_dataset(row, cfg, mode=mode)[0]
    if mode == "test":
        at = f" at {args.start:g} s" if args.start is not None else ""
        return item, f"eeg {args.eeg_id} (test recording){at}, {cfg.name} processing ({cfg.dataset})"
    r = row.iloc[0]
    votes = r[LABEL_COLS].to_numpy(float)
    shares = ", ".join(f"{c} {v / votes.sum():.2f}" for c, v in zip(CLASSES, votes) if v > 0)
    what = f"label_id {int(r['label_id'])}; votes: {shares}" if labelled else "no expert label at this offset"
    return item, (f"eeg {args.eeg_id}, window at {r['eeg_label_offset_seconds']:.0f} s, {what}; "
                  f"{cfg.name} processing ({cfg.dataset})")


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.recording:
        cfg = plot_config(args.config, Path(args.recording).parent, args.output_dir)
        item, title = recording_item(args, cfg)
        stem = Path(args.recording).name.split(".")[0]
    else:
        data_dir = require_dir(args.data_dir)
        cfg = plot_config(args.config, data_dir, args.output_dir)
        item, title = eeg_item(args, cfg, data_dir)
        stem = str(args.eeg_id)
    x, center = item["input"].numpy(), int(item["center"])
    model = build_model(cfg).eval()
    image, image_title, zoom, note = None, "", None, ""
    if hasattr(model, "make_image"):
        batch = {"input": item["input"][None], "center": item["center"][None]}
        with torch.no_grad():
            img = model.make_image(batch)[0]
        image = img[0].float().numpy()
        image_title = (f"{cfg.name} model input ({cfg.model}): image {tuple(img.shape)}"
                       + (", channel 0 of the 3 views shown" if img.shape[0] > 1 else ""))
        zoom = zoom_columns(model, batch)
        if zoom is not None:
            note = (f"zoom: central {cfg.enlarge_len / FS:g} s, finer time steps, its own dB level "
                    f"(darker is not less power)")
    else:
        print(f"note: {cfg.model} reads the raw signal (no image); plotting the channels only")
    out = Path(args.out) if args.out else Path(f"sample_{stem}_{cfg.name}.png")
    draw(x, center, image, title, image_title, out, float(cfg.scale), zoom, note)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))

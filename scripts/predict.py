"""Inference: every trained run of every blended config -> a Kaggle submission, or a probability
timeline for each of your own recordings.

    python scripts/predict.py [--data-dir datamount] [--out submission.csv] [--output-dir output]
                              [--blend output/blend_weights.json] [--device auto] [--batch-size 16]
                              [--amp-dtype float16|bfloat16|float32]
    python scripts/predict.py --recording FILE|FOLDER [...] [--stride 10] [--out-dir predictions]
                              [--allow-missing] [--channel-map FILE] [--event-threshold P] [--fast-path auto|off]
                              [--output-dir output] ...
    python scripts/predict.py --bids-root DIR [--stride 10] ...

Kaggle layout: for each eeg of <data_dir>/test.csv (a 50 s recording in <data_dir>/test_eegs/; a
longer one is scored on its first 50 s, a shorter one zero-padded, each with a warning): each run folder
<output_dir>/<cfg>/fold*/seed*/ (folds 0-3 and the fold -1 full fits) is rebuilt from its config.json
(pretrained weights off: the checkpoint holds them) and run in validation mode (no augmentation,
label centre 5000); a config's logits are the mean over its runs; the blend weights and class bias
of blend_weights.py combine the configs; softmax gives the probabilities. The submission is checked
(ids, columns, rows summing to 1) before it is written. Needs no network.

Precision as in training: each run under its own config's autocast (engine/precision.py: float16 on CUDA
for the mixed_precision configs, float32 on the CPU), or every run under --amp-dtype (float32: no
autocast); the header line names it. An unusable --device (no CUDA, cuda:N beyond the GPUs there, a
malformed name) is one error line.

--recording: EDF/EDF+, BDF, BrainVision (.vhdr), FIF, EEGLAB (.set) or Kaggle-style parquet of any
length and rate (data/recording.py reads, maps the channels by name, or by --channel-map, referential or
the 16 double-banana pairs, and resamples to 200 Hz), scored in 50 s windows every --stride seconds with
the same runs and blend; per recording it writes <name>_windows.csv, <name>_timeline.png (with the
file's own annotations), <name>_events.tsv (BIDS events) and <name>_annotations.csv (MNE's CSV
annotations: runs of windows of a harmful pattern, as top class or with p >= --event-threshold) and
<name>_file_annotations.tsv into --out-dir and prints a summary line. A FOLDER stands for the
recordings directly in it (sorted; sidecar files and sub-folders passed over); recordings whose names
would meet are named after their paths (inference/recordings.unique_names). A file that cannot be read,
decoded or written is one error line and the others are scored; the run ends with a summary table
(also <out-dir>/summary.tsv) and, if any file failed, an error line and exit code 2.

--bids-root DIR: every sub-*/[ses-*/]eeg/*_eeg.<ext> recording of the BIDS dataset DIR, its outputs in
DIR/derivatives/hms3rd/ in the same folders (sub-01_task-rest_eeg.edf -> sub-01_task-rest_desc-hms3rd_*),
with a dataset_description.json and summary.tsv there; nothing is written elsewhere in DIR.

--fast-path auto (the default; recordings on the CPU): each config runs on the fastest of float32,
channels_last (2D models) and bfloat16 autocast (where the CPU has AVX512-BF16 or AMX; never float16)
whose probabilities on the first batch of windows, with the config's first run, are within 0.01 of
float32's (inference/fast_path.py). One line per config gives each path's windows/s and difference, and
the header line names the paths. A config with too few windows to repay the timing keeps float32.
--fast-path off, an explicit --amp-dtype, or a device other than the CPU: each run under its config's
precision, as in training. The Kaggle layout always runs as in training: its few 50 s recordings would
not repay the timing.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import recording  # noqa: E402
from engine.precision import AMP_DTYPES  # noqa: E402
from inference import bids  # noqa: E402
from inference.fast_path import MODES as FAST_PATH_MODES  # noqa: E402
from inference.recordings import batch_of, score_recordings  # noqa: E402
from inference.submission import predict_submission  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import atomic_write_csv, run_cli  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="datamount", help="folder with test.csv and test_eegs/")
    p.add_argument("--out", default="submission.csv", help="submission file to write")
    p.add_argument("--output-dir", default="output", help="training runs: <output_dir>/<cfg>/fold<f>/seed<s>/")
    p.add_argument("--blend", default=None, help="blend weights JSON (default <output_dir>/blend_weights.json)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=16, help="recordings (--recording: windows) per forward pass")
    p.add_argument("--amp-dtype", default=None, choices=list(AMP_DTYPES),
                   help="autocast dtype for every run (float32: none); default: each run's config's, as in training")
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--cache-dir", default=None,
                   help="decoded-recording cache (default: <data_dir>/cache, or ~/.cache/hms3rd when read-only; "
                        "--recording: $HMS_CACHE_DIR/recordings or ~/.cache/hms3rd/recordings)")
    g = p.add_argument_group("your own recordings")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--recording", nargs="+", default=None, metavar="PATH",
                       help=f"score these files, and the recordings directly in these folders, instead of the Kaggle "
                            f"layout ({', '.join(recording.FORMATS)})")
    which.add_argument("--bids-root", default=None, metavar="DIR",
                       help="score every sub-*/[ses-*/]eeg/*_eeg.<ext> recording of this BIDS dataset; outputs in "
                            "DIR/derivatives/hms3rd/")
    g.add_argument("--stride", type=float, default=10.0, help="seconds between 50 s windows (10: the central 10 s tile)")
    g.add_argument("--out-dir", default=None,
                   help="where <name>_windows.csv, <name>_timeline.png, ... and summary.tsv go (default predictions; "
                        "not with --bids-root)")
    g.add_argument("--allow-missing", action="store_true",
                   help="score a recording that lacks some montage electrodes (their channels become zeros)")
    g.add_argument("--channel-map", default=None, metavar="FILE",
                   help="CSV (two columns) or JSON object: the file's channel name -> 10-20 electrode or pair "
                        "(Fp1, T7, Fp1-F7; empty: unused), for names the reader does not recognise")
    g.add_argument("--event-threshold", type=float, default=None, metavar="P",
                   help="a window is part of a harmful pattern's event when it is its top class or, with this, "
                        "when its probability reaches P")
    g.add_argument("--fast-path", default="auto", choices=list(FAST_PATH_MODES),
                   help="auto: on the CPU each config runs on its fastest path (fp32, channels_last, bf16) whose "
                        "probabilities on the first batch of windows are within 0.01 of fp32's; off (and with "
                        "--amp-dtype, on a GPU, or for the Kaggle layout): each run's config precision, as in training")
    args = p.parse_args(argv)
    if not args.stride > 0:
        p.error(f"--stride must be > 0 seconds, got {args.stride}")
    if args.event_threshold is not None and not 0 < args.event_threshold <= 1:
        p.error(f"--event-threshold must be in (0, 1], got {args.event_threshold}")
    if args.bids_root and args.out_dir:
        p.error("--out-dir does not apply with --bids-root: the outputs go to DIR/derivatives/hms3rd/")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.bids_root or args.recording:
        batch = (bids.bids_batch(args.bids_root, bids.describe_run(args.output_dir, args.blend, args.stride,
                                                                   args.event_threshold))
                 if args.bids_root else batch_of(args.recording, args.out_dir or "predictions"))
        return score_recordings(batch, args.output_dir, args.blend, args.stride, args.device, args.batch_size,
                                args.num_workers, args.cache_dir, args.allow_missing, args.amp_dtype, args.channel_map,
                                args.event_threshold, fast_path=args.fast_path)
    t0 = time.perf_counter()
    sub, _ = predict_submission(args.data_dir, args.output_dir, args.blend, args.device, args.batch_size, args.num_workers,
                                args.cache_dir, args.amp_dtype)
    atomic_write_csv(args.out, sub)
    print(f"wrote {args.out}: {len(sub)} row(s) in {time.perf_counter() - t0:.1f} s")
    return sub


if __name__ == "__main__":
    sys.exit(run_cli(main))

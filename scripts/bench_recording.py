"""Inference windows/s of each config family on this machine, per forward path, and the time to score an hour.

    python scripts/bench_recording.py                          # cfg_1 cfg_2a cfg_3 cfg_5a, full size, batch 16
    python scripts/bench_recording.py -C all --batches 3 --repeat 2   # every config, more batches, best of 2 rounds
    python scripts/bench_recording.py --demo-size --batch-size 4      # the demo's CPU-sized models (seconds)

Each config's model at full size (pretrained weights off, random weights from --seed), in eval mode, on the
windows of a synthetic recording made as predict.py --recording makes them (a parquet, its decoded cache,
the config's dataset in validation mode). Its batch-norm statistics are first estimated on those windows,
as a trained model's are on its data: with the initial statistics the untrained network's logits reach
hundreds, its probabilities are 0 or 1, and any rounding that flips the top class shows as a difference
of 1.

Per path (inference/fast_path.py): fp32 under inference_mode (predict's), fp32 under no_grad,
channels_last (2D models), bf16 autocast and bf16 + channels_last where the CPU has AVX512-BF16 or AMX
(never fp16 on a CPU): windows/s of the model's forward passes over --batches batches (built beforehand;
one untimed warm-up forward on two windows first; the fastest of --repeat interleaved rounds), and the
largest absolute softmax probability difference to fp32 on the same windows. "auto" marks the path
predict's --fast-path auto would keep. These random weights give near-uniform probabilities (logits
within about +-1), so a trained model's differences can be larger: predict measures them on the trained
runs themselves.

Then the time to score one hour of recording (windows at predict's default stride of 10 s) with the full
ensemble (the sweep's runs per config) and with one run per config, on fp32 and on the auto paths: per
config, the dataset's time per window once (runs of a config share one pass) plus each run's forward
passes. A config not timed here borrows the figures of a timed one with the same model sizes (marked =),
else of its model family (marked ~).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from configs.demo import demo_overrides  # noqa: E402
from configs.ensemble import CONFIGS  # noqa: E402
from data import recording, synthetic  # noqa: E402
from data.signal import FS  # noqa: E402
from engine.build import build_model  # noqa: E402
from engine.cpu_cost import SIZE_FIELDS  # noqa: E402
from inference import fast_path, timeline  # noqa: E402
from sweep.runs import make_runs  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.config import apply_overrides, available_configs, load_config  # noqa: E402
from utils.io import run_cli  # noqa: E402

FAMILIES = ["cfg_1", "cfg_2a", "cfg_3", "cfg_5a"]  # one config per model (mdl_1, mdl_2, mdl_3, mdl_4)
HOUR_S = 3600
STRIDE_S = 10.0  # predict.py --stride's default


@dataclass
class ConfigResult:
    name: str
    model: str
    params: int
    batch: int
    data_s: float  # dataset seconds per window
    measured: list  # fast_path.Measured, one per path
    chosen: fast_path.Measured
    size: str  # the model sizes (SIZE_FIELDS), to find which configs share these figures
    load: float  # 1-minute load average when its paths were timed: other processes share the CPU

    def by_name(self, path_name: str) -> fast_path.Measured:
        return next(m for m in self.measured if m.path.name == path_name)


def cpu_name() -> str:
    """lscpu's model name (platform's processor name where lscpu is absent)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_config(name: str, demo_size: bool, rest: list) -> object:
    """The config as benchmarked: pretrained off, the demo's sizes with --demo-size, then any overrides."""
    cfg = load_config(name)
    cfg.pretrained = False
    if demo_size:
        apply_overrides(cfg, demo_overrides(name))
    return apply_overrides(cfg, rest)


def size_key(cfg) -> str:
    return json.dumps([getattr(cfg, f, None) for f in SIZE_FIELDS], sort_keys=True, default=str)


def synthetic_windows(folder: Path, n_windows: int, seed: int) -> tuple[pd.DataFrame, recording.RecordingStore]:
    """A synthetic recording with a seizure, LPD and GRDA stretch (parquet, decoded as predict does) and
    its first n_windows windows at STRIDE_S."""
    rng = np.random.default_rng(seed)
    n = int((50 + STRIDE_S * (n_windows - 1)) * FS)
    x = np.empty((n, 20), np.float32)
    x[:, :19] = synthetic.background(rng, n)
    for k, cls in enumerate((synthetic.SEIZURE, synthetic.LPD, synthetic.GRDA)):
        synthetic.add_pattern(x[:, :19], rng, cls, 250.0, k % 2, k * n // 3, (k + 1) * n // 3)
    x[:, 19] = synthetic.ekg(rng, n)
    path = folder / "bench.parquet"
    synthetic.write_eeg(path, x)
    store = recording.RecordingStore([recording.open_recording(path)], folder / "cache")
    store.build(0)
    starts = timeline.window_starts(n, STRIDE_S)[:n_windows]
    return pd.DataFrame({"eeg_id": 0, "eeg_label_offset_seconds": starts / FS}), store


def bench_paths(cfg, device) -> list:
    """predict's candidates (fp32 under inference_mode first) plus fp32 under no_grad."""
    cands = fast_path.candidate_paths(cfg, device)
    return cands[:1] + [fast_path.ForwardPath(no_grad=True)] + cands[1:]


def estimate_bn_stats(model, batches: list[dict]) -> None:
    """Batch-norm running statistics = the plain mean over `batches` (training-mode forwards, no gradients),
    then eval mode again."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    model.eval()


def run_config(name: str, args, rest, windows, store, device) -> ConfigResult:
    cfg = bench_config(name, args.demo_size, rest)
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device).eval()
    t0 = time.perf_counter()
    batches = fast_path.window_batches(cfg, windows, device, args.batch_size, args.batches, store)
    data_s = (time.perf_counter() - t0) / len(windows)
    estimate_bn_stats(model, batches)
    measured = fast_path.measure(model, batches, bench_paths(cfg, device), device, args.repeat,
                                 lambda text: print(f"  {name}: {text}", file=sys.stderr, flush=True))
    chosen = fast_path.choose([m for m in measured if not m.path.no_grad], args.tolerance)
    params = sum(p.numel() for p in model.parameters())
    return ConfigResult(name, cfg.model, params, args.batch_size, data_s, measured, chosen, size_key(cfg),
                        os.getloadavg()[0])


def table_rows(result: ConfigResult) -> list[str]:
    rows = []
    for m in result.measured:
        diff = "(reference)" if m.path == fast_path.REFERENCE else f"{m.diff:.1e}"
        rows.append(f"| {result.name} | {result.model} | {result.params:,} | {m.path.name} | {m.windows_per_s:.3g} | "
                    f"{m.seconds * result.batch / m.windows:.3g} | {diff} | {'auto' if m is result.chosen else ''} | "
                    f"{result.load:.1f} |")
    return rows


TABLE_HEAD = ["| config | model | params | path | windows/s | s/batch | max abs prob diff vs fp32 | predict | load |",
              "|---|---|---|---|---|---|---|---|---|"]


def borrowed(results: dict, name: str, demo_size: bool, rest: list) -> tuple[ConfigResult | None, str]:
    """(the timed result config `name` is estimated from, how: '' itself, '= cfg_x' same sizes, '~ cfg_x' same model)."""
    if name in results:
        return results[name], ""
    cfg = bench_config(name, demo_size, rest)
    same_size = [r for r in results.values() if r.size == size_key(cfg)]
    if same_size:
        return same_size[0], f"= {same_size[0].name}"
    family = [r for r in results.values() if r.model == cfg.model]
    return (family[0], f"~ {family[0].name}") if family else (None, "")


def calibration_s(res: ConfigResult, n_windows: int, n_runs: int) -> float:
    """Seconds predict's --fast-path auto spends choosing res's path before scoring n_windows with n_runs
    (inference/fast_path.py: each candidate on a warm-up and a batch); 0 where it would not calibrate."""
    cands = [m for m in res.measured if not m.path.no_grad]
    windows = res.batch + min(res.batch, fast_path.WARMUP_WINDOWS)
    if len(cands) == 1 or len(cands) * windows > fast_path.MAX_CALIBRATION_SHARE * n_windows * n_runs:
        return 0.0
    return sum(windows / m.windows_per_s for m in cands)


def scoring_s(res: ConfigResult, n_windows: int, n_runs: int) -> tuple[float, float]:
    """(fp32, auto) seconds to score n_windows with n_runs of res's config: the dataset once, each run's
    forwards, and for auto the calibration (auto keeps fp32 where it does not calibrate)."""
    fp32, data = res.by_name("fp32"), n_windows * res.data_s
    calib = calibration_s(res, n_windows, n_runs)
    auto = res.chosen if calib else fp32
    return data + n_runs * n_windows / fp32.windows_per_s, data + calib + n_runs * n_windows / auto.windows_per_s


def hour_estimate(results: dict, demo_size: bool, rest: list) -> list[str]:
    """Lines: per config the seconds per run on fp32 and auto, then the full ensemble and one run per config."""
    n = len(timeline.window_starts(HOUR_S * FS, STRIDE_S))
    runs = Counter(r.config for r in make_runs())
    lines = [f"One hour ({HOUR_S} s at stride {STRIDE_S:g} s: {n} windows): the dataset once per config, each run's "
             "forwards, and auto's calibration (full ensemble):",
             "| config | timed as | runs | fp32 s/run | auto path | auto s/run | calibration s |",
             "|---|---|---|---|---|---|---|"]
    total = {"full": np.zeros(2), "one": np.zeros(2)}
    missing = []
    for name in CONFIGS:
        res, how = borrowed(results, name, demo_size, rest)
        if res is None:
            missing.append(name)
            continue
        total["full"] += scoring_s(res, n, runs[name])
        total["one"] += scoring_s(res, n, 1)
        lines.append(f"| {name} | {how or 'timed'} | {runs[name]} | {n / res.by_name('fp32').windows_per_s:.3g} | "
                     f"{res.chosen.path.name} | {n / res.chosen.windows_per_s:.3g} | "
                     f"{calibration_s(res, n, runs[name]):.3g} |")
    counted = [c for c in CONFIGS if c not in missing]
    lines += ["", "| ensemble | runs | fp32 | auto paths |", "|---|---|---|---|",
              f"| full ensemble | {sum(runs[c] for c in counted)} | {duration(total['full'][0])} | "
              f"{duration(total['full'][1])} |",
              f"| one run per config | {len(counted)} | {duration(total['one'][0])} | {duration(total['one'][1])} |"]
    if missing:
        lines.append(f"(no estimate for {', '.join(missing)}: no timed config of the same model; left out)")
    return lines


def duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def parse_args(argv):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-C", "--config", nargs="+", default=FAMILIES, help="config name(s), or 'all' (default: one per "
                    f"model family: {' '.join(FAMILIES)})")
    ap.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (predict's default)")
    ap.add_argument("--batches", type=int, default=1, help="timed batches per path and round")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all paths; the fastest kept per path")
    ap.add_argument("--tolerance", type=float, default=fast_path.TOLERANCE,
                    help="largest probability difference to fp32 for the 'auto' path")
    ap.add_argument("--device", default="cpu", help="cpu (the paths predict chooses among), or cuda")
    ap.add_argument("--seed", type=int, default=0, help="random weights and synthetic recording")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--demo-size", action="store_true", help="the demo's CPU-sized model of each config (configs/demo.py)")
    args, rest = ap.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config == ["all"]:
        args.config = [c for c in available_configs() if c in CONFIGS]
    return args, rest


def main(argv=None) -> dict:
    args, rest = parse_args(argv)
    device = torch.device(args.device)
    flags = fast_path.cpu_bf16_flags()
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads, bfloat16 instructions: "
          f"{', '.join(flags) or 'none (bf16 paths skipped)'}; torch {torch.__version__}; device {device}")
    print(f"load average (1, 5, 15 min) at start: {load_text()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_recording_") as tmp:
        windows, store = synthetic_windows(Path(tmp), args.batch_size * args.batches, args.seed)
        for name in args.config:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            results[name] = run_config(name, args, rest, windows, store, device)
    size = "demo-size" if args.demo_size else "full-size"
    print(f"\n{size} models, batch {args.batch_size}, {args.batches} timed batch(es), best of {args.repeat} round(s); "
          f"load average at end: {load_text()}")
    print("\n".join(TABLE_HEAD + [row for r in results.values() for row in table_rows(r)]))
    print()
    print("\n".join(hour_estimate(results, args.demo_size, rest)))
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))

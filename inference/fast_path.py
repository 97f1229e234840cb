"""The fastest way to run each config's models on this CPU whose probabilities on a calibration batch are
within 0.01 of float32's.

Candidate paths (`candidate_paths`), all under torch.inference_mode: float32; float32 with channels_last
(2D models, those with `set_channels_last`); bfloat16 autocast, alone and with channels_last, only where
the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: elsewhere autocast emulates
them slowly). Never float16 on a CPU: torch's CPU float16 convolutions are slow (engine/precision.py).

`choose_paths` (predict.py --recording, --fast-path auto): per config, its first run's model on the first
batch of the real windows; each candidate runs once untimed on WARMUP_WINDOWS of them (a warm-up), then
once timed on the whole batch (its probabilities). The fastest whose largest absolute probability
difference to float32 on that batch is at most TOLERANCE is kept; float32 stays unless the fastest is at
least MIN_GAIN faster (the timing noise of a shared CPU would otherwise flip the choice). A config whose
calibration windows would exceed MAX_CALIBRATION_SHARE of its scoring windows (a short recording, few
runs) keeps float32 uncalibrated. The differences reported are those of fixed inputs; only the timings
vary from one call to the next. The other windows are not compared: a path's difference there is like
that on the calibration batch, not bounded by it.

Nothing is chosen (None: each run under its config's autocast as in training, inference/ensemble.py) with
--fast-path off, with an explicit --amp-dtype, and on any device but the CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from engine.build import build_dataset, model_module
from engine.precision import SHORT, autocast_ctx
from engine.step import to_device
from inference.ensemble import load_model
from utils.io import DataError
from utils.metric import softmax

MODES = ("auto", "off")
TOLERANCE = 0.01  # largest absolute probability difference to float32 a chosen path may have
MIN_GAIN = 0.05  # a path replaces float32 only when at least this much faster (share of float32's time)
MAX_CALIBRATION_SHARE = 0.25  # calibration windows / scoring windows of a config, at most
WARMUP_WINDOWS = 2  # a path's untimed first forward runs on this many windows of the first batch
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The bfloat16 instruction flags of this CPU ([] when none, or where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in BF16_FLAGS if f in flags]


@dataclass(frozen=True)
class ForwardPath:
    """How a forward pass runs: autocast dtype (float32: none), channels_last, and the grad mode
    (inference_mode; no_grad only as the benchmark's comparison)."""

    amp_dtype: str = "float32"
    channels_last: bool = False
    no_grad: bool = False

    @property
    def name(self) -> str:
        """fp32, bf16+cl, fp32+no_grad, ..."""
        return "+".join([SHORT[self.amp_dtype]] + ["cl"] * self.channels_last + ["no_grad"] * self.no_grad)

    def autocast(self, device):
        return autocast_ctx(self.amp_dtype, device)

    def grad_mode(self):
        return torch.no_grad() if self.no_grad else torch.inference_mode()

    def prepare(self, model):
        """The model in this path's memory format (in place; a model without the switch is left as it is)."""
        if hasattr(model, "set_channels_last"):
            model.set_channels_last(self.channels_last)
        elif self.channels_last:
            raise ValueError(f"{type(model).__module__}: channels_last does not apply to this model")
        return model


REFERENCE = ForwardPath()  # float32, inference_mode: what every difference is measured against


def candidate_dtypes(device) -> list[str]:
    """Autocast dtypes worth trying: CPU float32, plus bfloat16 with hardware support; CUDA float32,
    float16 and (where supported) bfloat16; other devices float32."""
    kind = torch.device(device).type
    if kind == "cpu":
        return ["float32"] + (["bfloat16"] if cpu_bf16_flags() else [])
    if kind == "cuda":
        return ["float32", "float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else [])
    return ["float32"]


def has_channels_last(cfg) -> bool:
    """Whether the config's model can switch to channels_last (the 2D models)."""
    return hasattr(model_module(cfg).Net, "set_channels_last")


def candidate_paths(cfg, device) -> list[ForwardPath]:
    """The paths to try for cfg's model on device, the float32 reference first."""
    layouts = [False, True] if has_channels_last(cfg) else [False]
    return [ForwardPath(dtype, cl) for dtype in candidate_dtypes(device) for cl in layouts]


def window_batches(cfg, df, device, batch_size: int, n_batches: int = 1, store=None) -> list[dict]:
    """The first n_batches batches of df's windows as inference sees them (validation mode, on device)."""
    ds = build_dataset(df.iloc[:batch_size * n_batches], cfg, mode="test")
    if store is not None:
        ds.store = store
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    return [to_device({k: v for k, v in b.items() if k != "target"}, device) for b in loader]


def timed_forward(model, batch: dict, path: ForwardPath, device) -> tuple[float, np.ndarray]:
    """(seconds, float32 logits on the host) of one forward pass under `path` (the copy to the host
    waits for the device)."""
    t0 = time.perf_counter()
    with path.grad_mode(), path.autocast(device)():
        logits = model(batch)["logits"].float().cpu().numpy()
    return time.perf_counter() - t0, logits


@dataclass
class Measured:
    path: ForwardPath
    seconds: float  # the timed batches together (fastest round)
    windows: int
    probs: np.ndarray  # (windows, 6)
    diff: float = 0.0  # largest |p - p_fp32|

    @property
    def windows_per_s(self) -> float:
        return self.windows / max(self.seconds, 1e-12)


def measure(model, batches: list[dict], paths: list[ForwardPath], device, repeats: int = 1,
            say=None) -> list[Measured]:
    """Each path on the same batches: one untimed forward of the first WARMUP_WINDOWS windows (a warm-up:
    kernels chosen, memory allocated, weights reordered), then `repeats` rounds over the paths (interleaved: a load spike hits a round, not one path), the fastest round
    kept; probabilities from the first round, differences to REFERENCE (which must be among the paths).
    `say(text)`, when given, hears each step's time (a benchmark's progress)."""
    if REFERENCE not in paths:
        raise ValueError("measure needs the float32 reference path")
    warmup = {k: v[:WARMUP_WINDOWS] for k, v in batches[0].items()}
    for path in paths:
        seconds, _ = timed_forward(path.prepare(model), warmup, path, device)
        if say:
            say(f"{path.name} warm-up {seconds:.1f} s")
    best, probs = {}, {}
    for r in range(repeats):
        for path in paths:
            path.prepare(model)
            runs = [timed_forward(model, b, path, device) for b in batches]
            best[path] = min(best.get(path, np.inf), sum(s for s, _ in runs))
            if say:
                say(f"{path.name} round {r + 1}: {sum(s for s, _ in runs):.1f} s")
            probs.setdefault(path, softmax(np.concatenate([lg for _, lg in runs]).astype(np.float64)))
    ref = probs[REFERENCE]
    return [Measured(p, best[p], len(ref), probs[p], float(np.abs(probs[p] - ref).max())) for p in paths]


def choose(measured: list[Measured], tolerance: float | None = None, min_gain: float | None = None) -> Measured:
    """The fastest measured path within `tolerance` (default TOLERANCE) of float32; float32 unless that one
    is at least `min_gain` (default MIN_GAIN) faster."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    min_gain = MIN_GAIN if min_gain is None else min_gain
    ref = next(m for m in measured if m.path == REFERENCE)
    fastest = min((m for m in measured if m.diff <= tolerance), key=lambda m: m.seconds)
    return fastest if fastest.seconds <= (1 - min_gain) * ref.seconds else ref


def calibration_line(name: str, measured: list[Measured], chosen: Measured, seconds: float) -> str:
    parts = [f"{m.path.name} {m.windows_per_s:.2f} win/s" + ("" if m.path == REFERENCE else f", diff {m.diff:.1e}")
             for m in measured]
    return f"fast path {name}: {' | '.join(parts)} -> {chosen.path.name} (calibrated in {seconds:.1f} s)"


def choose_paths(runs: dict, df, device, store=None, batch_size: int = 16, amp_dtype: str | None = None,
                 mode: str = "auto", tolerance: float | None = None) -> dict[str, ForwardPath] | None:
    """{config: path} for scoring df's windows with runs {config: [(run_dir, cfg), ...]}, printing one
    line per config; None where nothing is chosen (module docstring)."""
    if mode not in MODES:
        raise DataError(f"--fast-path {mode!r}: one of {', '.join(MODES)}")
    if mode == "off" or amp_dtype is not None or torch.device(device).type != "cpu":
        return None
    paths = {}
    for name, members in runs.items():
        paths[name] = calibrate(name, members, df, device, store, batch_size, tolerance)
    return paths


def calibrate(name: str, members: list, df, device, store, batch_size: int, tolerance: float | None) -> ForwardPath:
    """One config's path (module docstring), its line printed."""
    run_dir, cfg = members[0]
    cands = candidate_paths(cfg, device)
    n = min(batch_size, len(df))
    if len(cands) == 1:
        print(f"fast path {name}: fp32 (the only path for this model on this CPU)")
        return REFERENCE
    if len(cands) * (n + min(n, WARMUP_WINDOWS)) > MAX_CALIBRATION_SHARE * len(df) * len(members):
        print(f"fast path {name}: fp32 ({len(df)} window(s) x {len(members)} run(s): too few to repay calibrating "
              f"{len(cands)} paths)")
        return REFERENCE
    t0 = time.perf_counter()
    model = load_model(run_dir, cfg, device)
    measured = measure(model, window_batches(cfg, df, device, n, 1, store), cands, device)
    chosen = choose(measured, tolerance)
    del model
    print(calibration_line(name, measured, chosen, time.perf_counter() - t0))
    return chosen.path


def describe_paths(paths: dict[str, ForwardPath]) -> str:
    """For the header line: 'path bf16+cl (--fast-path auto)', or per config when they differ."""
    names = {p.name for p in paths.values()}
    which = next(iter(names)) if len(names) == 1 else ", ".join(f"{c} {p.name}" for c, p in paths.items())
    return f"path {which} (--fast-path auto)"

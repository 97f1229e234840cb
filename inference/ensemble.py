"""The trained ensemble: every finished run of every blended config, rebuilt from its config.json, run in
validation mode (no augmentation) on any rows, and blended (the blend's weights and class bias, then softmax).
`ensemble_probs` is the one place the blend is applied; the Kaggle submission and recordings both use it.

Precision as in training (engine/precision.py): each run's model runs under the autocast of its own config
(`resolve_amp_dtype`: float16 on CUDA for a mixed_precision config, float32 on the CPU unless cpu_amp or an
explicit amp_dtype), or under one dtype for every run (`amp_dtype`, predict.py's --amp-dtype); float32 is no
autocast. Runs sharing a pass over the data may differ in it (amp_dtype is a run-only key). predict.py
--recording may instead name one path per config (`paths`: autocast dtype and memory format, chosen on the CPU by
inference/fast_path.py). Logits are summed in float32 or wider."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from configs.default_config import RUN_ONLY_KEYS
from data.signal import LABEL_COLS
from engine.build import build_dataset, build_model
from engine.precision import AMP_DTYPES, autocast_ctx, resolve_amp_dtype, setup_backend
from engine.step import to_device
from inference import blend
from utils import checkpoint as ckpt
from utils.io import DataError
from utils.metric import softmax


def resolve_device(name: str) -> torch.device:
    """auto (cuda when available, else cpu), cpu, cuda, cuda:N (N below the number of CUDA devices), or
    another torch device type this machine has (mps); anything else is one DataError line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DataError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    if not callable(getattr(backend, "is_available", None)):
        raise DataError(f"--device {name}: {dev.type} devices are not supported here (use auto, cpu, cuda or cuda:N)")
    if not backend.is_available():
        kind = "CUDA" if dev.type == "cuda" else dev.type
        raise DataError(f"--device {name}: {kind} is not available on this machine (use --device cpu)")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if dev.index is not None and dev.index >= count:
        have = f"{dev.type}:0" + (f" to {dev.type}:{count - 1}" if count > 1 else "")
        raise DataError(f"--device {name}: no such device; this machine has {count} {dev.type} device(s) ({have})")
    return dev


def run_amp_dtype(cfg, device, amp_dtype: str | None = None) -> str:
    """The autocast dtype of one run: `amp_dtype` when given (every run), else its config's, as train.py
    resolves it on this device."""
    if amp_dtype is None:
        return resolve_amp_dtype(cfg, device)
    if amp_dtype not in AMP_DTYPES:
        raise DataError(f"bad value for --amp-dtype: {amp_dtype!r} (one of {', '.join(AMP_DTYPES)})")
    return amp_dtype


def amp_dtypes(runs, device, amp_dtype: str | None = None) -> dict[str, int]:
    """{autocast dtype: number of runs} over {config: [(run_dir, cfg), ...]}, in AMP_DTYPES' order."""
    names = [run_amp_dtype(cfg, device, amp_dtype) for members in runs.values() for _, cfg in members]
    return {name: names.count(name) for name in AMP_DTYPES if name in names}


def describe_amp(runs, device, amp_dtype: str | None = None) -> str:
    """For the header line: 'amp float16', or 'amp float16 (6 runs), float32 (2 runs)' when runs differ."""
    counts = amp_dtypes(runs, device, amp_dtype)
    if len(counts) == 1:
        return f"amp {next(iter(counts))}"
    return "amp " + ", ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in counts.items())


def load_model(run_dir: Path, cfg, device) -> torch.nn.Module:
    path = Path(run_dir) / ckpt.CHECKPOINT_FILE
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


def _model_and_autocast(run, cfg, device, amp_dtype, path):
    """(model, autocast factory) of one run: its own precision (or amp_dtype), or `path`'s."""
    model = load_model(run, cfg, device)
    if path is None:
        return model, autocast_ctx(run_amp_dtype(cfg, device, amp_dtype), device)
    return path.prepare(model), path.autocast(device)


def config_logits(runs, df, device, batch_size=16, num_workers=0, progress=None, store=None,
                  amp_dtype: str | None = None, path=None) -> np.ndarray:
    """Mean logits (N, 6) of one config's runs [(run_dir, cfg), ...] on the rows of df, in order
    (validation mode: no augmentation), each run under its own autocast (`run_amp_dtype`), or every run
    on `path` (an inference/fast_path.ForwardPath: autocast, memory format, grad mode). `store`
    replaces the Kaggle folder's recordings (--recording)."""
    groups: dict[str, list] = {}
    for run, cfg in runs:
        groups.setdefault(_signature(cfg), []).append((run, cfg))
    total = np.zeros((len(df), len(LABEL_COLS)))
    for members in groups.values():
        models = [_model_and_autocast(run, cfg, device, amp_dtype, path) for run, cfg in members]
        ds = build_dataset(df, members[0][1], mode="test")
        if store is not None:
            ds.store = store
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        row = 0
        with torch.inference_mode() if path is None else path.grad_mode():
            for batch in loader:
                batch = to_device({k: v for k, v in batch.items() if k != "target"}, device)
                n = len(batch["input"])
                for model, autocast in models:
                    with autocast():
                        logits = model(batch)["logits"]
                    total[row:row + n] += logits.float().cpu().numpy()
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
                   unit="rec*run", amp_dtype: str | None = None, paths: dict | None = None) -> tuple[np.ndarray, dict]:
    """The one place for the blend: (probabilities (N, 6), each config's mean logits) on df's rows.
    `amp_dtype` (float16, bfloat16, float32) replaces every run's own autocast dtype; `paths` {config:
    ForwardPath} (inference/fast_path.choose_paths) replaces both for the configs it names."""
    n_runs = sum(len(r) for r in runs.values())
    dtypes = amp_dtypes(runs, device, amp_dtype)
    # once, as train.py does. TF32 matmuls only when every run is float32: a float16/bfloat16 run trained
    # without them, and a float32 run sharing the device with one gets exact float32 matmuls instead
    setup_backend(device, "float32" if set(dtypes) == {"float32"} else next(d for d in dtypes if d != "float32"))
    logits = {}
    with tqdm(total=len(df) * n_runs, desc=desc, unit=unit, disable=None) as bar:
        for cfg, members in runs.items():
            bar.set_postfix_str(cfg)
            logits[cfg] = config_logits(members, df, device, batch_size, num_workers, bar, store, amp_dtype,
                                        (paths or {}).get(cfg))
    names = list(logits)
    blended = blend.blend_logits(np.stack([logits[c] for c in names], axis=2),
                                 [weights["weights"][c] for c in names], weights["bias"])
    return softmax(blended), logits

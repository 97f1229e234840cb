"""Training speed and peak memory of a config's model: forward + backward + Adam step on a random batch.

    python scripts/bench_model.py -C cfg_5a                        # this device, the config's batch size and precision
    python scripts/bench_model.py -C cfg_5a --amp-dtype bfloat16 --compile --channels-last --steps 20
    python scripts/bench_model.py -C cfg_1 cfg_3 --table --variants fp16 bf16+compile   # fresh process per row, one table
    python scripts/bench_model.py --before-after                   # CPU: the torchaudio mel (before) vs now, one table
    python scripts/bench_model.py -C cfg_3 --batch-size 2 --compare-loops    # vs per-sample Python loops
    python scripts/bench_model.py -C cfg_5a --backbone test_efficientnet     # any config field overrides
    python scripts/bench_model.py -C cfg_1 cfg_2a cfg_3 cfg_5a --demo-size --table --variants fp32 fp16 bf16

Peak memory: on CUDA torch.cuda.max_memory_allocated over the timed steps (what the model needs,
without the allocator's cache); on the CPU the process's maximum RSS (with --table each row runs in
a fresh process, so it is that row's own peak, imports included). A variant is '+'-joined tokens:
fp16 / bf16 / fp32 (autocast dtype; none: the config's own, engine/precision.py), compile, cl
(channels_last), legacy (the code before the mel rewrite: torchaudio transforms and index tensors
built in every forward; eager, no switches). The batch is random with the dataset's shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from configs.demo import demo_overrides  # noqa: E402
from models import layers  # noqa: E402
from engine import precision  # noqa: E402
from engine.build import build_model  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.config import ConfigError, apply_overrides, available_configs, load_config  # noqa: E402
from utils.io import run_cli  # noqa: E402
from engine.build import maybe_compile  # noqa: E402
from engine.step import backward, optimizer_step  # noqa: E402

JSON_TAG = "BENCH_JSON "
DTYPE_TOKENS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
BEFORE_AFTER = [("cfg_2a", 8), ("cfg_3", 2), ("cfg_5a", 2)]  # CPU-sized batches


# --- the code before the mel rewrite (for --legacy / the 'legacy' variant only) -------------------
class LegacyMel(nn.Module):
    """The mel front-end as it was: torchaudio MelSpectrogram + AmplitudeToDB on (B*C, T)."""

    def __init__(self, spec_args: dict, top_db=None):
        super().__init__()
        import torchaudio

        args = dict(spec_args, power=2.0, mel_scale="htk", center=True, pad_mode="reflect")
        self.mel = torchaudio.transforms.MelSpectrogram(**args)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=top_db)

    def forward(self, x):
        b, c, t = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = self.to_db(self.mel(x.float().reshape(b * c, t)))
        return spec.reshape(b, c, spec.shape[-2], spec.shape[-1])


def use_legacy_code() -> None:
    """Patch the model modules (in this process) back to the torchaudio mel and per-forward index tensors."""
    from models import mdl_1, mdl_3, mdl_4

    original = mdl_3.three_views
    mdl_1.MelFrontEnd = mdl_4.MelFrontEnd = LegacyMel
    mdl_3.three_views = lambda spec, partners=None: original(spec, None)  # built from the Python list each call


# --- naive per-sample reference (for --compare-loops only) ----------------------------------------
def loop_channel_dropout(x, p, max_channels, generator=None):
    out = x.clone()
    for i in range(x.shape[0]):
        if np.random.random() < p:
            for ch in np.random.randint(0, x.shape[1], np.random.randint(1, max_channels + 1)):
                out[i, ch] = 0
    return out


def loop_crop_center(self, x, center):
    outs = []
    for i in range(x.shape[0]):
        s = min(max(int(center[i]) - self.enlarge_len // 2, 0), x.shape[-1] - self.enlarge_len)
        outs.append(x[i, :, s:s + self.enlarge_len])
    return torch.stack(outs)


def loop_splice(self, main, zoom, center, total):
    w = main.shape[-1]
    half = self.half_cut(w)
    outs = []
    for i in range(main.shape[0]):
        s = min(max(w * int(center[i]) // total - half, 0), w - 2 * half - 1)
        outs.append(torch.cat([main[i, ..., :s], zoom[i], main[i, ..., s + 2 * half:]], dim=-1))
    return torch.stack(outs)


def make_loopy(model):
    """Swap the batched crop/splice/channel dropout of `model` for the per-sample loops above."""
    import types

    swapped = []
    for klass in type(model).__mro__:
        mod = sys.modules.get(klass.__module__)
        if mod is not None and getattr(mod, "channel_dropout", None) is layers.channel_dropout:
            mod.channel_dropout = loop_channel_dropout
            swapped.append(f"{mod.__name__}.channel_dropout")
    for name, fn in (("crop_center", loop_crop_center), ("splice", loop_splice)):
        if hasattr(model, name):
            setattr(model, name, types.MethodType(fn, model))
            swapped.append(name)
    return swapped


def restore_batched(model):
    for klass in type(model).__mro__:
        mod = sys.modules.get(klass.__module__)
        if mod is not None and getattr(mod, "channel_dropout", None) is loop_channel_dropout:
            mod.channel_dropout = layers.channel_dropout


# --- one measurement ------------------------------------------------------------------------------
def random_batch(cfg, batch_size: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    window = cfg.window_len
    return {
        "input": (torch.randn(batch_size, window, 16, generator=g) * 2).to(device),
        "target": torch.softmax(torch.randn(batch_size, cfg.n_classes, generator=g), 1).to(device),
        "center": torch.randint(window // 6, window - window // 6, (batch_size,), generator=g).to(device),
        "label_weight": torch.ones(batch_size).to(device),
    }


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def time_training(model, batch, device, steps: int, amp_dtype: str, warmup: int) -> list[float]:
    """Seconds per training step over `steps` steps after `warmup` untimed ones (allocations, autotuning,
    compile). CPU: each step timed alone (rows report the fastest and the median); CUDA: the mean
    (no synchronisation between steps)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = precision.make_scaler(amp_dtype, device)
    autocast = precision.autocast_ctx(amp_dtype, device)

    def step():
        with autocast():
            loss = model(batch)["loss"]
        backward(loss, scaler, 1)
        optimizer_step(model.parameters(), opt, scaler, clip_grad=None)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        return [(time.perf_counter() - t) / steps] * steps
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def bench_one(args, rest) -> dict:
    """Build the model as asked, time it, and return one result row."""
    if args.legacy:
        use_legacy_code()
    cfg = load_config(args.config[0])
    cfg.pretrained = False  # the bench measures speed; weights do not matter
    cfg.compile, cfg.channels_last = args.compile, args.channels_last
    if args.demo_size:  # the demo's CPU-sized model of the config (configs/demo.py)
        apply_overrides(cfg, demo_overrides(cfg.name))
    apply_overrides(cfg, rest)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but CUDA is not available")
    if args.amp_dtype:
        cfg.amp_dtype = args.amp_dtype
    amp_dtype = precision.resolve_amp_dtype(cfg, device)
    precision.setup_backend(device, amp_dtype)
    torch.manual_seed(0)
    np.random.seed(0)
    bs = args.batch_size or cfg.batch_size
    model = maybe_compile(build_model(cfg).to(device), cfg)
    batch = random_batch(cfg, bs, device)
    warmup = args.warmup if args.warmup is not None else (2 if cfg.compile or device.type == "cuda" else 1)
    times = time_training(model, batch, device, args.steps, amp_dtype, warmup)
    step_s = min(times)  # the least disturbed step: other processes only ever add time
    row = dict(config=cfg.name, model=cfg.model, backbone=cfg.backbone or "-", device=str(device), batch=bs,
               amp=precision.describe(amp_dtype), compile=bool(cfg.compile), channels_last=bool(cfg.channels_last),
               legacy=bool(args.legacy), params=sum(p.numel() for p in model.parameters() if p.requires_grad),
               samples_s=bs / step_s, step_s=step_s, median_step_s=float(np.median(times)),
               peak_mib=peak_memory_mib(device),
               memory="cuda max allocated" if device.type == "cuda" else "max RSS",
               load=os.getloadavg()[0])  # 1-min load average: other processes share a CPU
    if args.compare_loops:
        swapped = make_loopy(model)
        try:
            row["loops_samples_s"] = bs / float(np.median(time_training(model, batch, device, args.steps, amp_dtype, 1)))
        finally:
            restore_batched(model)
        row["loops_swapped"] = swapped
    return row


def print_row(row: dict) -> None:
    flags = [f for f, on in (("compile", row["compile"]), ("channels_last", row["channels_last"]),
                             ("legacy code", row["legacy"])) if on]
    print(f"{row['config']} ({row['model']}, {row['backbone']}, {row['params']:,} params) on {row['device']}, "
          f"batch {row['batch']}, {row['amp']}{''.join(', ' + f for f in flags)}")
    print(f"  {row['samples_s']:8.2f} samples/s ({row['step_s']:.2f} s/step, median {row['median_step_s']:.2f}), "
          f"peak memory {row['peak_mib']:8.0f} MiB ({row['memory']}), load {row['load']:.1f}")
    if "loops_samples_s" in row:
        print(f"  loops: {row['loops_samples_s']:8.2f} samples/s (per-sample {', '.join(row['loops_swapped']) or 'nothing'});"
              f" batched is {row['samples_s'] / row['loops_samples_s']:.2f}x")


# --- tables: one fresh process per row -----------------------------------------------------------
def variant_flags(variant: str) -> list[str]:
    flags = []
    for token in filter(None, variant.split("+")):
        if token in DTYPE_TOKENS:
            flags += ["--amp-dtype", DTYPE_TOKENS[token]]
        elif token in ("compile", "cl", "legacy"):
            flags.append({"compile": "--compile", "cl": "--channels-last", "legacy": "--legacy"}[token])
        elif token != "default":
            raise ConfigError(f"unknown variant token '{token}' (fp16, bf16, fp32, compile, cl, legacy, default)")
    return flags


def run_row(config: str, batch: int | None, variant: str, args, rest) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "-C", config, "--json", "--device", args.device,
           "--steps", str(args.steps), *variant_flags(variant), *rest]
    if batch:
        cmd += ["--batch-size", str(batch)]
    cmd += ["--demo-size"] if args.demo_size else []
    for flag, value in (("--warmup", args.warmup), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_TAG)]
    if proc.returncode or not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(config=config, variant=variant, batch=batch, error=tail[:120])
    return dict(json.loads(found[-1][len(JSON_TAG):]), variant=variant)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| config | model | batch | variant | precision | samples/s | s/step (best) | s/step (median) | peak MiB | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | | {r['batch'] or ''} | {r['variant']} | | failed: {r['error']} | | | | |")
        else:
            lines.append(f"| {r['config']} | {r['model']} | {r['batch']} | {r['variant']} | {r['amp']} | "
                         f"{r['samples_s']:.2f} | {r['step_s']:.2f} | {r['median_step_s']:.2f} | {r['peak_mib']:.0f} | "
                         f"{r['load']:.1f} |")
    return "\n".join(lines)


def table(jobs: list[tuple[str, int | None]], variants: list[str], args, rest) -> list[dict]:
    """Every job x variant in a fresh process; with --repeat the rounds interleave (a load spike hits
    one round, not one variant) and a row keeps its fastest step and its largest peak."""
    best = {}
    for _ in range(args.repeat):
        for config, batch in jobs:
            is_2d = load_config(config).model != "mdl_2"
            for variant in variants:
                if "cl" in variant.split("+") and not is_2d:
                    continue  # channels_last concerns the 2D backbones only
                print(f"  {config} batch {batch or 'cfg'} {variant} ...", file=sys.stderr, flush=True)
                row, key = run_row(config, batch, variant, args, rest), (config, batch, variant)
                old = best.get(key)
                if old is None or "error" in old or ("error" not in row and row["step_s"] < old["step_s"]):
                    best[key] = dict(row, peak_mib=max(row.get("peak_mib", 0), (old or {}).get("peak_mib", 0)))
                else:
                    old["peak_mib"] = max(old["peak_mib"], row.get("peak_mib", 0))
    return list(best.values())


def parse_args(argv):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-C", "--config", nargs="+", default=None, help="config name(s); 'all' for every config")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's batch_size")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; 2 with compile or CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp-dtype", choices=list(precision.AMP_DTYPES), default=None,
                    help="autocast dtype (default: the config's, as train.py resolves it)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (cfg.compile)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last 2D backbone (cfg.channels_last)")
    ap.add_argument("--legacy", action="store_true", help="the code before the mel rewrite (torchaudio transforms)")
    ap.add_argument("--compare-loops", action="store_true", help="also time the per-sample-loop reference")
    ap.add_argument("--table", action="store_true", help="one fresh process per config x variant; print a markdown table")
    ap.add_argument("--variants", nargs="+", default=["default"], help="with --table: e.g. fp16 bf16+compile fp16+cl")
    ap.add_argument("--repeat", type=int, default=1, help="with --table: rounds over all rows, best kept")
    ap.add_argument("--before-after", action="store_true",
                    help="table of legacy vs default (plus --variants) for cfg_2a batch 8, cfg_3 and cfg_5a batch 2")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--demo-size", action="store_true", help="the demo's CPU-sized model of each config (configs/demo.py)")
    args, rest = ap.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, rest


def main(argv=None):
    args, rest = parse_args(argv)
    if args.before_after:
        extra = [v for v in args.variants if v != "default"]
        rows = table(BEFORE_AFTER, ["legacy", "default", *extra], args, rest)
        print(markdown_table(rows))
        return
    if not args.config:
        raise ConfigError("give -C config (or --before-after)")
    configs = available_configs() if args.config == ["all"] else args.config
    if args.table:
        rows = table([(c, args.batch_size) for c in configs], args.variants, args, rest)
        print(markdown_table(rows))
        return
    if len(configs) > 1:
        raise ConfigError("several configs need --table (one process each)")
    row = bench_one(args, rest)
    if args.json:
        print(JSON_TAG + json.dumps(row))
    else:
        print_row(row)


if __name__ == "__main__":
    sys.exit(run_cli(main))

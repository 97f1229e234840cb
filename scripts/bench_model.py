"""Training speed of a config's model: samples/s and peak memory of forward + backward + Adam step.

    python scripts/bench_model.py -C cfg_5a --device cuda --amp --batch-size 16 --steps 20 --compare-loops
    python scripts/bench_model.py -C cfg_3 --batch-size 2 --steps 2            # CPU, small
    python scripts/bench_model.py -C cfg_5a --backbone test_efficientnet        # any config field overrides

The batch is random with the dataset's shapes (input, target, center, label_weight). With
--compare-loops the same model is timed again with per-sample Python loops in the channel
dropout, the center crop and the zoom splice (a naive reference written here, not in the models).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import layers  # noqa: E402
from utils.build import build_model  # noqa: E402
from utils.config import ConfigError, apply_overrides, load_config  # noqa: E402
from utils.io import run_cli  # noqa: E402


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


# --- benchmark ------------------------------------------------------------------------------------
def random_batch(cfg, batch_size: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    window = cfg.window_len
    return {
        "input": (torch.randn(batch_size, window, 16, generator=g) * 2).to(device),
        "target": torch.softmax(torch.randn(batch_size, cfg.n_classes, generator=g), 1).to(device),
        "center": torch.randint(window // 6, window - window // 6, (batch_size,), generator=g).to(device),
        "label_weight": torch.ones(batch_size).to(device),
    }


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def time_training(model, batch, device, steps: int, amp: bool, amp_dtype) -> float:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    def step():
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up (allocations, cuDNN autotuning)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * len(batch["input"]) / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-C", "--config", required=True)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's batch_size")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="mixed precision (CPU: bf16 autocast; CUDA: see --amp-dtype)")
    ap.add_argument("--amp-dtype", choices=["fp16", "bf16"], default="fp16", help="CUDA autocast dtype")
    ap.add_argument("--compare-loops", action="store_true", help="also time the per-sample-loop reference")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args, rest = ap.parse_known_args(argv)
    cfg = load_config(args.config)
    cfg.pretrained = False  # the bench measures speed; weights do not matter
    apply_overrides(cfg, rest)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but CUDA is not available")
    amp_dtype = torch.bfloat16 if device.type == "cpu" or args.amp_dtype == "bf16" else torch.float16
    torch.manual_seed(0)
    np.random.seed(0)
    bs = args.batch_size or cfg.batch_size
    model = build_model(cfg).to(device)
    batch = random_batch(cfg, bs, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    amp_txt = f"amp {str(amp_dtype).split('.')[-1]}" if args.amp else "fp32"
    print(f"{cfg.name} ({cfg.model}, {cfg.backbone}, {n_params:,} params) on {device}, batch {bs}, {amp_txt}, "
          f"{args.steps} steps")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rate = time_training(model, batch, device, args.steps, args.amp, amp_dtype)
    print(f"  batched : {rate:8.2f} samples/s, peak memory {peak_memory_mb(device):8.0f} MiB")
    if args.compare_loops:
        swapped = make_loopy(model)
        try:
            loop_rate = time_training(model, batch, device, args.steps, args.amp, amp_dtype)
        finally:
            restore_batched(model)
        print(f"  loops   : {loop_rate:8.2f} samples/s (per-sample {', '.join(swapped) or 'nothing to swap'}); "
              f"batched is {rate / loop_rate:.2f}x")


if __name__ == "__main__":
    sys.exit(run_cli(main))

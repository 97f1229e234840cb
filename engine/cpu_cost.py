"""What a real-size config costs to train on the CPU, so train.py can say so before the first step.

The figures are measured, not modelled: scripts/bench_model.py (fp32, eager, one fresh process per row,
peak RSS of the whole process: torch, the model, Adam state, activations; the fastest of 2-3 steps
after a warm-up) on this project's 2-core AMD EPYC CPU with 24 GB, shared with other work, on
2026-11-25:

    python scripts/bench_model.py -C cfg_1 cfg_3 cfg_4 cfg_5a cfg_5d --table --batch-size 1 --steps 3
    python scripts/bench_model.py -C cfg_1 cfg_4 cfg_5d --table --batch-size 2 --steps 2     (load 1.0-1.6)
    python scripts/bench_model.py -C cfg_2a --table --batch-size 4 --steps 3
    python scripts/bench_model.py --before-after --repeat 2 --steps 2   (cfg_3, cfg_5a batch 2; cfg_2a batch 8; load 1.9-2.5)

Memory is linear in the batch size through the two measured points; time is proportional to it, from
the larger batch (at batch 1 this CPU's oneDNN picks other convolution kernels). Times measured under
a load of 3-5 were up to 5x longer: the minutes are a floor for a busy machine, and fewer with more cores.
A config is estimated from the measured config with the same model sizes (backbone, mels, zoom,
mdl_2 widths): cfg_5b/5c use cfg_5a's figures, cfg_2b cfg_2a's. Any other size (the demo's, a user's
smaller backbone) has no estimate: it is not a GPU-sized run.
"""
from __future__ import annotations

from configs.demo import demo_overrides
from utils.cli import shell_quote
from utils.config import available_configs, load_config

# config -> peak RSS in GiB at two batch sizes, and seconds per training step at one (fp32, CPU above)
CPU_MEASURED = {
    "cfg_1": dict(rss_gib={1: 3.01, 2: 5.06}, step_s={2: 3.45}),
    "cfg_2a": dict(rss_gib={4: 2.16, 8: 3.27}, step_s={8: 3.12}),
    "cfg_3": dict(rss_gib={1: 1.88, 2: 2.84}, step_s={2: 1.33}),
    "cfg_4": dict(rss_gib={1: 3.26, 2: 5.52}, step_s={2: 4.72}),
    "cfg_5a": dict(rss_gib={1: 4.16, 2: 6.63}, step_s={2: 5.96}),
    "cfg_5d": dict(rss_gib={1: 5.78, 2: 10.42}, step_s={2: 16.58}),
}
SIZE_FIELDS = ("model", "backbone", "in_chans", "window_len", "spec_args", "spec_args_center", "enlarge_len",
               "cut_from_large_mel", "frontend_filters", "sq_dim", "sq_heads", "sq_layers", "sq_conv_kernel",
               "sq_ff_expansion", "rotary_max_len")
# the demo's overrides that set the model's size (configs/demo.py), quoted in the warning
DEMO_SIZE_KEYS = ("pretrained", "backbone", "spec_args", "spec_args_center", "frontend_filters", "sq_dim",
                  "sq_heads", "sq_layers", "batch_size")


def _sizes(cfg) -> tuple:
    return tuple(getattr(cfg, f, None) for f in SIZE_FIELDS)


def measured_twin(cfg) -> str | None:
    """The measured config whose model has cfg's sizes (None: no figures for this size)."""
    sizes = _sizes(cfg)
    for name in CPU_MEASURED:
        if _sizes(load_config(name)) == sizes:
            return name
    return None


def estimate_train_memory_gb(cfg) -> float | None:
    """Peak RSS (GiB) of training cfg on the CPU in float32 at cfg.batch_size; None for unmeasured sizes."""
    twin = measured_twin(cfg)
    if twin is None:
        return None
    (b1, m1), (b2, m2) = sorted(CPU_MEASURED[twin]["rss_gib"].items())
    return m1 + (m2 - m1) / (b2 - b1) * (cfg.batch_size - b1)


def estimate_step_minutes(cfg) -> float | None:
    """Minutes per training batch of cfg.batch_size on the 2-core CPU above; None for unmeasured sizes."""
    twin = measured_twin(cfg)
    if twin is None:
        return None
    ((batch, seconds),) = CPU_MEASURED[twin]["step_s"].items()
    return seconds / batch * cfg.batch_size / 60


def demo_size_overrides(name: str) -> str:
    """The demo's size overrides for config `name`, shell-quoted, e.g. '--backbone test_efficientnet ...'."""
    tokens = demo_overrides(name)
    keep = []
    for key, value in zip(tokens[::2], tokens[1::2]):
        if key[2:] in DEMO_SIZE_KEYS:
            keep += [key, shell_quote(value)]
    return " ".join(keep)


def cpu_warning(cfg, n_train_rows: int | None = None) -> str | None:
    """One line for train.py to print before training a real-size config on the CPU (None otherwise)."""
    gb, minutes = estimate_train_memory_gb(cfg), estimate_step_minutes(cfg)
    if gb is None or minutes is None:
        return None
    epoch = ""
    if n_train_rows:
        hours = minutes * (n_train_rows // cfg.batch_size) / 60
        epoch = f", ~{hours:.0f} h per epoch of {n_train_rows:,} rows"
    name = cfg.name if cfg.name in available_configs() else measured_twin(cfg)
    return (f"note: {cfg.name} is sized for a GPU; training it on a CPU needs about {gb:.0f} GB and about "
            f"{minutes:.1f} min per batch of {cfg.batch_size}{epoch} (measured on 2 cores, fp32). "
            f"A CPU-sized run of the same model: add {demo_size_overrides(name)}")

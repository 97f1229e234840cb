"""Numeric precision and backend settings: one code path for every device.

`cfg.amp_dtype` names the autocast dtype ("float16", "bfloat16" or "float32" = no autocast) on any
device. Left at None it is derived from the older switches, so every config keeps its behaviour:
  CUDA (or any non-CPU device): "float16" when `mixed_precision` (the reference's choice), else "float32";
  CPU: "bfloat16" when `cpu_amp`, else "float32" (a CPU trains in float32 unless asked).
An explicit `--amp_dtype` wins over both switches. float16 comes with a GradScaler; bfloat16 and
float32 do not need one (the scaler is created disabled, so train.py's calls stay the same).
The models' mel front-end stays float32 under every autocast (models/layers.py).

CPU float16 autocast runs grouped and depthwise convolutions in float32 (`keep_grouped_convs_fp32`, applied by
build_model to every model): torch 2.11's CPU float16 kernels for them take minutes per call on Intel Xeons
with AVX512-FP16, where float32 takes a millisecond. Every other op, the GradScaler and the optimiser step
stay as on CUDA, and CUDA (or bfloat16, or no autocast) is untouched.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn

from utils.config import ConfigError

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def resolve_amp_dtype(cfg, device: torch.device) -> str:
    """The autocast dtype name for this run (see the module docstring)."""
    name = getattr(cfg, "amp_dtype", None)
    if name is not None:
        if name not in AMP_DTYPES:
            raise ConfigError(f"bad value for --amp_dtype: {name!r} (one of {', '.join(AMP_DTYPES)}, or None)")
        return name
    if torch.device(device).type == "cpu":
        return "bfloat16" if cfg.cpu_amp else "float32"
    return "float16" if cfg.mixed_precision else "float32"


def autocast_ctx(amp_dtype: str, device: torch.device):
    """A zero-argument factory of the autocast context for `device` (nullcontext for float32), so a
    training step reads `with autocast(): ...` whatever the device and dtype."""
    if amp_dtype == "float32":
        return contextlib.nullcontext
    dtype, kind = AMP_DTYPES[amp_dtype], torch.device(device).type
    return lambda: torch.autocast(kind, dtype=dtype)


def make_scaler(amp_dtype: str, device: torch.device) -> torch.amp.GradScaler:
    """GradScaler for the device, enabled only for float16 (bfloat16 has float32's range)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=amp_dtype == "float16")


def setup_backend(device: torch.device, amp_dtype: str = "float16") -> None:
    """CUDA: cuDNN autotuning (the input shapes are fixed per config) and TF32 convolutions; TF32
    matmuls only for amp_dtype float32 (under fp16/bf16 autocast the matmuls are half precision
    anyway). In float32 mode the mel filterbank product then runs in TF32 too (a relative error of
    about 1e-3 on the power, a few thousandths of a dB). No-op on other devices."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = amp_dtype == "float32"


def describe(amp_dtype: str) -> str:
    """Short name for logs and tables: fp16, bf16, fp32."""
    return SHORT[amp_dtype]


def cpu_fp16_autocast() -> bool:
    """True inside a CPU float16 autocast region."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16


def _grouped_conv_forward(module, x):
    """The convolution in float32 under CPU float16 autocast, its output in float16 as autocast would give it
    (so the ops after it run as on CUDA); elsewhere the module's own forward."""
    if x.device.type == "cpu" and cpu_fp16_autocast():
        with torch.autocast("cpu", enabled=False):
            out = type(module).forward(module, x.float())
        return out.to(torch.float16)
    return type(module).forward(module, x)


def keep_grouped_convs_fp32(model: nn.Module) -> int:
    """Make every grouped/depthwise convolution of `model` compute in float32 under CPU float16 autocast (its
    output is float16, as autocast's would be). Elsewhere they run as before. The state dict is unchanged.
    Returns how many convolutions were wrapped."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and "forward" not in vars(m):
            m.forward = functools.partial(_grouped_conv_forward, m)  # picklable, unlike a bound method
            n += 1
    return n

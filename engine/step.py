"""The optimiser half of a training step with gradient accumulation, shared by train.py and the tests.

backward() on every batch, optimizer_step() every `grad_accumulation` batches: with batch-mean losses
and a model without batch statistics, B x accumulation k updates as (B k) x 1 does (tests/test_precision.py).
Neither function reads a value back to the host, except GradScaler.step's inf check when float16
scaling is on (a fused optimizer, `Adam(fused=True)`, avoids that one too).
"""
from __future__ import annotations

import torch


FUSED_ADAM_DEVICES = ("cuda", "cpu")  # torch 2.11 has a fused Adam kernel for both


def make_optimizer(params, cfg, device) -> torch.optim.Optimizer:
    """Adam as the reference (lr, weight_decay), one fused kernel per step where the device has one
    (the same update as the per-tensor loop, within float rounding), else the foreach implementation."""
    impl = {"fused": True} if torch.device(device).type in FUSED_ADAM_DEVICES else {"foreach": True}
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler, grad_accumulation: int) -> None:
    """Accumulate the gradients of loss / grad_accumulation (scaled when the scaler is enabled)."""
    scaler.scale(loss / grad_accumulation).backward()


def optimizer_step(params, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip_grad: float | None) -> None:
    """Unscale, clip the total gradient norm to clip_grad (if > 0), step (skipped by the scaler on
    inf/NaN), update the scale, and clear the gradients."""
    if clip_grad and clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def to_device(batch: dict, device) -> dict:
    """A loader's batch on `device` (tensors moved without blocking; other values as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

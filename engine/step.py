"""The optimiser half of a training step with gradient accumulation, shared by train.py and the tests.

backward() on every batch, optimizer_step() every `grad_accumulation` batches: with batch-mean losses
and a model without batch statistics, B x accumulation k updates as (B k) x 1 does (tests/test_precision.py).
Neither function reads a value back to the host, except GradScaler.step's inf check when float16
scaling is on (a fused optimizer, `Adam(fused=True)`, avoids that one too).
"""
from __future__ import annotations

import math

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


def pending_grads(params, scaler: torch.amp.GradScaler) -> list:
    """This process's accumulated gradients not yet applied by an optimiser step (under DDP each rank's own,
    never all-reduced), unscaled, on the CPU; None where a parameter has none."""
    inv = 1.0 / scaler.get_scale() if scaler.is_enabled() else 1.0  # a power of two: exact
    return [None if p.grad is None else (p.grad.detach().float() * inv).cpu() for p in params]


def restore_pending_grads(params, per_rank: list, rank: int, world: int, scaler: torch.amp.GradScaler) -> None:
    """Set the parameters' gradients from `per_rank` (one pending_grads list per process of the saved run),
    scaled for this run's scaler. The same world size: this rank's own list; another: the mean over the
    saved ranks, which is what their all-reduce would have applied."""
    grads = per_rank[rank] if len(per_rank) == world else mean_grads(per_rank)
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    for p, g in zip(params, grads):
        p.grad = None if g is None else (g * scale).to(p.device, p.dtype)


def mean_grads(per_rank: list) -> list:
    """Elementwise mean of several processes' gradient lists (None where none of them has one)."""
    out = []
    for gs in zip(*per_rank):
        present = [g for g in gs if g is not None]
        out.append(sum(present) / len(gs) if present else None)
    return out


def cosine_schedule(optimizer, total_steps: int):
    """Cosine from lr to 0 over total_steps, no warm-up (held at 0 beyond the end)."""
    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

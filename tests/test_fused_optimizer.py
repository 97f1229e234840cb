"""The optimiser train.py builds is fused Adam on the CPU as on CUDA (engine/step.make_optimizer), and fp16
training steps with the GradScaler and gradient clipping go through it: built by train.build(), stepped by
engine.step as train_epoch steps it, each update equal to Adam written out by hand in float64 on the
unscaled, clipped gradients (and not equal to the update without clipping)."""
import math

import torch

import train
from engine import step as opt_step
from engine.loaders import make_train_loader
from utils import distributed as dist_utils

SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off"]
CLIP = 1e-6  # far below the gradients' norm: the clipped gradients are of the order of Adam's eps, so clipping shows


def adam(ref, state, grads, t, lr, betas, eps, weight_decay):
    """torch.optim.Adam's update (L2 weight decay, bias-corrected moments), float64, in place on `ref`."""
    b1, b2 = betas
    for i, (p, g) in enumerate(zip(ref, grads)):
        g = g + weight_decay * p if weight_decay else g
        m, v = state.setdefault(i, (torch.zeros_like(p), torch.zeros_like(p)))
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.sub_(lr / (1 - b1 ** t) * m / (v.sqrt() / math.sqrt(1 - b2 ** t) + eps))


def test_train_builds_fused_adam_and_fp16_steps_with_scaler_and_clipping_go_through_it(tiny_data, tmp_path):
    cfg, opts = train.parse_args(["-C", "cfg_2a", "--fold", "0", "--seed", "4", "--data_dir", str(tiny_data),
                                  "--output_dir", str(tmp_path), *SMALL, "--amp_dtype", "float16",
                                  "--clip_grad", str(CLIP)])
    info = dist_utils.setup()
    run = train.build(cfg, opts, info, log=lambda *a, **k: None)
    assert info.device.type == "cpu" and run.amp == "float16" and run.scaler.is_enabled()
    assert type(run.optimizer) is torch.optim.Adam and run.optimizer.defaults["fused"] is True
    group = run.optimizer.param_groups[0]
    hyper = dict(lr=group["lr"], betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])
    assert hyper["lr"] == cfg.lr > 0

    params = list(run.model.parameters())
    clipped = [p.detach().double().clone() for p in params]
    unclipped = [p.clone() for p in clipped]
    state_c, state_u = {}, {}
    run.model.train()
    stepped, skipped = 0, 0
    for batch in make_train_loader(cfg, run.train_df, info, 0):  # 6 training rows: 3 batches of 2
        batch = run.prepare_batch(opt_step.to_device(batch, info.device), cfg, 0)
        with run.autocast():
            loss = run.model(batch)["loss"]
        opt_step.backward(loss, run.scaler, 1)
        scale = run.scaler.get_scale()
        assert scale > 1  # the loss was scaled
        grads = [p.grad.double() / scale for p in params]
        finite = all(torch.isfinite(g).all() for g in grads)
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads)) if finite else math.inf
        opt_step.optimizer_step(run.model.parameters(), run.optimizer, run.scaler, cfg.clip_grad)  # as train_epoch
        if finite:  # a step: scale kept, gradients clipped to CLIP
            stepped += 1
            assert run.scaler.get_scale() == scale and norm > 100 * CLIP
            coef = CLIP / (norm + 1e-6)
            adam(clipped, state_c, [g * coef for g in grads], stepped, **hyper)
            adam(unclipped, state_u, grads, stepped, **hyper)
        else:  # an overflow: step skipped, scale halved
            skipped += 1
            assert run.scaler.get_scale() == scale / 2
        for p, c, u in zip(params, clipped, unclipped):
            torch.testing.assert_close(p.detach().double(), c, rtol=0, atol=1e-6)
        assert all(p.grad is None for p in params)
    assert stepped >= 2 and stepped + skipped == 3
    moved = max(float((c - u).abs().max()) for c, u in zip(clipped, unclipped))
    assert moved > 100 * 1e-6  # without clipping the update would have been another one
    steps = [int(s["step"]) for s in run.optimizer.state.values()]
    assert len(steps) == len(params) and set(steps) == {stepped}

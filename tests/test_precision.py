"""Precision on the CPU (the CUDA code path is the same, see tests/test_cuda.py): fp16 + GradScaler and bf16
training steps are finite and their logits stay within a stated tolerance of float32; gradient
accumulation; which dtype a config resolves to; the speed switches keep the numbers."""
import copy
import io

import pytest
import torch
import torch.nn as nn

from models.layers import kl_loss
from engine import precision
from engine.build import build_model
from utils.config import ConfigError, available_configs, load_config
from engine.build import maybe_compile
from engine.step import backward, optimizer_step

CPU = torch.device("cpu")
# |logit(amp) - logit(fp32)| <= ATOL + RTOL |logit(fp32)|, at initialisation and after one Adam step
# (measured: fp16 3e-4..2e-3, bf16 3e-3..9e-3 on logits of size ~1)
TOL = {"float16": dict(atol=0.01, rtol=0.02), "bfloat16": dict(atol=0.03, rtol=0.05)}


def small_cfg(name, **kw):
    """The config's model family at a CPU-friendly size: mdl_2 as is (shorter input), 2D models with
    timm's tiny test backbone and coarser mels."""
    cfg = load_config(name)
    cfg.pretrained = False
    if cfg.model != "mdl_2":
        cfg.backbone = "test_efficientnet"
        cfg.spec_args = dict(cfg.spec_args, n_mels=16, hop_length=cfg.spec_args["hop_length"] * 4)
        if getattr(cfg, "spec_args_center", None):
            cfg.spec_args_center = dict(cfg.spec_args_center, n_mels=16,
                                        hop_length=cfg.spec_args_center["hop_length"] * 8)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def make_batch(cfg, b=4, seed=1):
    t = 1000 if cfg.model == "mdl_2" else cfg.window_len
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(b, t, 16, generator=g) * 3, "center": torch.randint(t // 4, t - t // 4, (b,), generator=g),
            "target": torch.softmax(torch.randn(b, 6, generator=g), 1), "label_weight": torch.tensor([0.3, 0.3, 1.0, 1.0])[:b]}


def eval_logits(model, batch, amp_dtype):
    model.eval()
    with torch.no_grad(), precision.autocast_ctx(amp_dtype, CPU)():
        return model(batch)["logits"].float()


def train_step(model, batch, amp_dtype):
    """One training step as train.py does it; returns the loss."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = precision.make_scaler(amp_dtype, CPU)
    torch.manual_seed(0)  # the same dropout draws for every dtype
    with precision.autocast_ctx(amp_dtype, CPU)():
        loss = model(batch)["loss"]
    backward(loss, scaler, 1)
    optimizer_step(model.parameters(), opt, scaler, clip_grad=4.0)
    return loss.detach()


@pytest.mark.parametrize("name", ["cfg_2a", "cfg_5a"])
def test_fp16_and_bf16_steps_are_finite_and_close_to_fp32(name):
    torch.manual_seed(0)
    base = build_model(small_cfg(name))
    batch = make_batch(base.cfg)
    ref = copy.deepcopy(base)
    ref_logits = eval_logits(ref, batch, "float32")
    assert torch.isfinite(train_step(ref, batch, "float32"))
    ref_after = eval_logits(ref, batch, "float32")
    for amp_dtype in ("float16", "bfloat16"):
        model = copy.deepcopy(base)
        logits = eval_logits(model, batch, amp_dtype)
        torch.testing.assert_close(logits, ref_logits, **TOL[amp_dtype])
        assert not torch.equal(logits, ref_logits)  # autocast really ran in lower precision
        loss = train_step(model, batch, amp_dtype)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        torch.testing.assert_close(eval_logits(model, batch, "float32"), ref_after, **TOL[amp_dtype])
    assert not torch.allclose(ref_after, ref_logits)  # the step moved the model


def test_fp16_scaler_skips_a_step_with_inf_gradients():
    model = nn.Linear(4, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = precision.make_scaler("float16", CPU)
    before = [p.detach().clone() for p in model.parameters()]
    loss = kl_loss(model(torch.full((2, 4), 1e30)), torch.full((2, 6), 1 / 6)) * 1e10  # overflows once scaled
    backward(loss, scaler, 1)
    assert not torch.isfinite(model.weight.grad).all()
    optimizer_step(model.parameters(), opt, scaler, clip_grad=20.0)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() < 2.0**16


@pytest.mark.parametrize("clip_grad", [0.0, 0.05])
@pytest.mark.parametrize("scaled", [False, True])
def test_accumulation_equals_one_big_batch(scaled, clip_grad):
    """Batch 2 x accumulation 2 gives the update of batch 4 x 1 (batch-mean loss, no batch statistics),
    also through the GradScaler's scale/unscale (float32 compute: fp16 GEMMs round differently per batch size)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 6))
    x, target = torch.randn(4, 8), torch.softmax(torch.randn(4, 6), 1)
    results = []
    for chunks in (1, 2):
        model = copy.deepcopy(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # unlike Adam, sensitive to the gradient scale
        scaler = torch.amp.GradScaler("cpu", enabled=scaled)
        for _ in range(3):  # three optimiser steps
            for xs, ts in zip(x.chunk(chunks), target.chunk(chunks)):
                backward(kl_loss(model(xs), ts), scaler, chunks)
            optimizer_step(model.parameters(), opt, scaler, clip_grad)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    moved = (results[0] - torch.cat([p.detach().flatten() for p in net.parameters()])).abs().max()
    assert moved > 1e-3
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", available_configs())
def test_amp_dtype_resolution_keeps_every_configs_behaviour(name):
    cfg = load_config(name)
    assert cfg.amp_dtype is None
    cuda = "float16" if cfg.mixed_precision else "float32"
    assert precision.resolve_amp_dtype(cfg, torch.device("cuda")) == cuda
    assert precision.resolve_amp_dtype(cfg, CPU) == "float32"
    cfg.cpu_amp = True
    assert precision.resolve_amp_dtype(cfg, CPU) == "bfloat16"
    for explicit in ("float16", "bfloat16", "float32"):
        cfg.amp_dtype = explicit
        assert precision.resolve_amp_dtype(cfg, CPU) == precision.resolve_amp_dtype(cfg, torch.device("cuda")) == explicit
    cfg.amp_dtype = "fp16"
    with pytest.raises(ConfigError, match="amp_dtype"):
        precision.resolve_amp_dtype(cfg, CPU)


def test_autocast_scaler_and_backend_helpers():
    assert precision.make_scaler("float16", CPU).is_enabled()
    assert not precision.make_scaler("bfloat16", CPU).is_enabled() and not precision.make_scaler("float32", CPU).is_enabled()
    with precision.autocast_ctx("bfloat16", CPU)():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision.autocast_ctx("float32", CPU)():
        assert not torch.is_autocast_enabled("cpu")
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    precision.setup_backend(CPU)
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == flags


@pytest.mark.parametrize("name", ["cfg_1", "cfg_3", "cfg_5a", "cfg_2a"])
def test_every_model_family_traces_as_one_graph(name):
    model = build_model(small_cfg(name)).train()
    explained = torch._dynamo.explain(model)(make_batch(model.cfg, b=2))
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_channels_last_and_compile_keep_logits_and_state_dict_keys():
    torch.manual_seed(0)
    ref = build_model(small_cfg("cfg_4")).eval()
    model = build_model(small_cfg("cfg_4", channels_last=True, compile=True)).eval()
    model.load_state_dict(ref.state_dict())
    assert model.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert maybe_compile(model, model.cfg) is model and list(model.state_dict()) == list(ref.state_dict())
    batch = make_batch(ref.cfg, b=2)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], ref(batch)["logits"], rtol=1e-4, atol=1e-5)
    assert maybe_compile(ref, ref.cfg) is ref and ref._compiled_call_impl is None  # off: untouched


class ConvDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (groups, input dtype) of every aten convolution and its backward, as the kernels receive them."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.seen.add((int(args[8]) > 1, args[0].dtype))
        elif func is torch.ops.aten.convolution_backward.default:
            self.seen.add((int(args[9]) > 1, args[1].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["cfg_1", "cfg_2a", "cfg_3", "cfg_5a"])
def test_cpu_fp16_runs_grouped_convolutions_in_float32_and_the_rest_in_float16(name):
    """torch 2.11's CPU float16 grouped/depthwise convolutions take minutes per call on AVX512-FP16 Xeons: under
    CPU fp16 autocast no grouped convolution (forward or backward) may receive float16, while dense ones still do."""
    cfg = small_cfg(name)
    model = build_model(cfg).train()
    batch = make_batch(cfg, b=2)
    with ConvDtypes() as rec:
        with precision.autocast_ctx("float16", CPU)():
            loss = model(batch)["loss"]
        loss.backward()
    grouped = {dtype for is_grouped, dtype in rec.seen if is_grouped}
    dense = {dtype for is_grouped, dtype in rec.seen if not is_grouped}
    assert grouped == {torch.float32}  # every family has grouped convolutions (depthwise in the backbones)
    assert torch.float16 in dense
    with ConvDtypes() as rec, precision.autocast_ctx("bfloat16", CPU)():
        model(batch)
    assert {dtype for is_grouped, dtype in rec.seen if is_grouped} == {torch.bfloat16}  # only fp16 is special


def test_the_grouped_convolution_wrapper_pickles_and_gives_autocasts_dtype():
    """A whole model saved with torch.save (spawned workers, EMA copies) keeps the wrapper; the wrapped
    convolution hands on float16, as autocast's own convolution would, so what follows runs as on CUDA."""
    model = nn.Sequential(nn.Conv1d(8, 8, 5, groups=8, padding=2), nn.Conv1d(8, 4, 1))
    assert precision.keep_grouped_convs_fp32(model) == 1
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(2, 8, 40)
    with ConvDtypes() as rec, precision.autocast_ctx("float16", CPU)():
        out = loaded[0](x)
    assert out.dtype == torch.float16 and rec.seen == {(True, torch.float32)}
    torch.testing.assert_close(out.float(), model[0](x), atol=2e-3, rtol=2e-3)  # fp32 math, fp16 rounding

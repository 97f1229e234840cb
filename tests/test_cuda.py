"""GPU acceptance tests (marker `cuda`; run by scripts/gpu_check.sh). Skipped without a CUDA device.

HMS_TEST_DEVICE=cpu runs them on the CPU instead (gloo instead of NCCL, CPU twin of the CUDA mel):
that exercises every line of the GPU code path on a machine without one, at a CPU's speed.
Shapes are the real ones (50 s windows, the configs' backbones and mels, pretrained off), batch 2.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import precision
from engine.build import build_model
from utils.config import load_config
from engine.build import maybe_compile
from engine.step import backward, optimizer_step

DEVICE = torch.device(os.environ.get("HMS_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]
ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"mdl_1": "cfg_1", "mdl_2": "cfg_2a", "mdl_3": "cfg_3", "mdl_4": "cfg_5a"}
# |logit(amp) - logit(fp32)| <= atol + rtol |logit(fp32)|, real-size random-init models in train mode
# without dropout (logits up to ~1); measured on the CPU: fp16 at most 0.002, bf16 at most 0.016
TOL = {"float16": dict(atol=0.01, rtol=0.01), "bfloat16": dict(atol=0.05, rtol=0.05)}


def real_cfg(name, **kw):
    cfg = load_config(name)
    cfg.pretrained = False
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def no_dropout_cfg(name, **kw):
    """Deterministic in train mode: batch statistics keep a random-init model's activations at a
    trained model's scale (its eval-mode running stats would let them grow to logits of ~1e3)."""
    return real_cfg(name, drop_rate=0.0, drop_path_rate=0.0, channel_dropout_p=0.0, sq_dropout=0.0, input_dropout=0.0,
                    **kw)


def make_batch(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"input": torch.randn(b, cfg.window_len, 16, generator=g) * 3,
             "center": torch.randint(2000, cfg.window_len - 2000, (b,), generator=g),
             "target": torch.softmax(torch.randn(b, 6, generator=g), 1),
             "label_weight": torch.tensor([0.3, 1.0, 1.0, 0.5])[:b]}
    return {k: v.to(DEVICE) for k, v in batch.items()}


def train_steps(model, batch, amp_dtype, steps=2):
    precision.setup_backend(DEVICE)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = precision.make_scaler(amp_dtype, DEVICE)
    losses = []
    for _ in range(steps):
        with precision.autocast_ctx(amp_dtype, DEVICE)():
            loss = model(batch)["loss"]
        backward(loss, scaler, 1)
        optimizer_step(model.parameters(), opt, scaler, clip_grad=20.0)
        losses.append(loss.detach().float())
    return torch.stack(losses)


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_steps_are_finite(family, amp_dtype):
    torch.manual_seed(0)
    model = build_model(real_cfg(FAMILIES[family])).to(DEVICE)
    losses = train_steps(model, make_batch(model.cfg), amp_dtype)
    assert torch.isfinite(losses).all(), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_amp_logits_close_to_fp32(family):
    torch.manual_seed(0)
    model = build_model(no_dropout_cfg(FAMILIES[family])).to(DEVICE).train()
    batch = make_batch(model.cfg)
    precision.setup_backend(DEVICE)
    with torch.no_grad():
        ref = model(batch)["logits"].float()
        for amp_dtype in ("float16", "bfloat16"):
            with precision.autocast_ctx(amp_dtype, DEVICE)():
                out = model(batch)["logits"].float()
            torch.testing.assert_close(out, ref, **TOL[amp_dtype])


def test_compiled_channels_last_equals_eager_and_trains():
    torch.manual_seed(0)
    ref = build_model(no_dropout_cfg("cfg_5a")).to(DEVICE).train()
    model = build_model(no_dropout_cfg("cfg_5a", compile=True, channels_last=True)).to(DEVICE)
    model.load_state_dict(ref.state_dict())
    maybe_compile(model, model.cfg).train()
    batch = make_batch(ref.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], ref(batch)["logits"], rtol=1e-3, atol=1e-3)
    assert torch.isfinite(train_steps(model, batch, "float16")).all()


@pytest.mark.parametrize("name", ["cfg_1", "cfg_3", "cfg_4", "cfg_5a", "cfg_5d"])
def test_device_mel_equals_cpu_mel(name):
    precision.setup_backend(DEVICE)
    model = build_model(real_cfg(name, backbone="test_efficientnet")).eval()
    batch = make_batch(model.cfg, b=4)
    with torch.no_grad():
        cpu = model.spectrogram({k: v.cpu() for k, v in batch.items()})
        dev = model.to(DEVICE).spectrogram(batch)
    assert dev.device.type == DEVICE.type and dev.dtype == torch.float32
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-4, atol=2e-3)  # dB; FFT libraries round differently


def test_two_process_ddp_step_equals_one_process(tmp_path):
    """Two DDP processes with 2 rows each make the update one process makes with the 4 rows (NCCL on
    GPUs; eval mode, so no batch statistics; float32)."""
    if DEVICE.type == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    worker = ROOT / "tests" / "ddp_step_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HMS_TEST_DEVICE": DEVICE.type,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if DEVICE.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # utils.distributed picks gloo
    for nproc, name in ((2, "ddp.pt"), (1, "single.pt")):
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                              str(nproc), str(worker), str(tmp_path / name)], capture_output=True, text=True,
                             timeout=600, cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert ddp["backend"] == ("nccl" if DEVICE.type == "cuda" else "gloo") and ddp["world_size"] == 2
    assert single["world_size"] == 1
    moved = max((a - b).abs().max() for a, b in zip(single["params"], single["before"]))
    assert moved > 1e-4
    for a, b in zip(ddp["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

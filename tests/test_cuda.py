"""GPU acceptance tests (marker `cuda`; run by scripts/gpu_check.sh). Skipped without a CUDA device.

Each compares against an independent computation: fp16/bf16 logits against float32, compiled against eager,
the model's mel front-end on the device against torchaudio's transforms on the CPU, two DDP processes against
one; the training steps go through engine.step with the fused Adam train.py builds (make_optimizer).
Shapes are the real ones (50 s windows, the configs' backbones and mels, pretrained off), batch 2.

HMS_TEST_DEVICE=cpu runs the same tests on the CPU (CPU kernels and CPU autocast, fused Adam's CPU kernel,
gloo instead of NCCL), at a CPU's speed. That checks the tests and the device-independent code they drive;
it runs no CUDA kernel (cuDNN, cuFFT, cuBLAS, fused Adam's CUDA kernel), no NCCL, and none of the lines only
CUDA executes: scripts/cuda_only_lines.py lists those of train.py, engine/precision.py and
utils/distributed.py (tests/test_cuda_only_lines.py checks that the list holds nothing else).
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import precision
from engine.build import build_model, maybe_compile
from engine.step import backward, make_optimizer, optimizer_step
from models.layers import MelFrontEnd
from scripts.bench_model import LegacyMel as TorchaudioMel  # the front-end before the rewrite: the reference
from utils.config import load_config

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
    opt = make_optimizer(model.parameters(), model.cfg, DEVICE)  # as train.py: fused Adam on CUDA and CPU
    assert opt.defaults["fused"] is True
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
def test_device_mel_equals_torchaudio_mel(name):
    """The model's mel front-end (models/layers.MelFrontEnd) on the device against torchaudio's MelSpectrogram
    + AmplitudeToDB on the CPU (scripts/bench_model.LegacyMel): the same model with its mels swapped for
    torchaudio's. mdl_4's crop and splice are the model's own code on both sides (tests/test_mel_models.py
    checks them). Tolerance: 2e-3 dB + 1e-4 relative (FFT libraries round differently; on the CPU the two
    agree within 1e-5, tests/test_mel_frontend.py)."""
    precision.setup_backend(DEVICE)
    model = build_model(real_cfg(name, backbone="test_efficientnet")).eval()
    cfg, ref = model.cfg, copy.deepcopy(model)
    ref.mel = TorchaudioMel(cfg.spec_args, cfg.top_db)
    if hasattr(model, "mel_center"):
        ref.mel_center = TorchaudioMel(cfg.spec_args_center, cfg.top_db)
        assert isinstance(model.mel_center, MelFrontEnd)
    assert isinstance(model.mel, MelFrontEnd)
    batch = make_batch(cfg, b=4)
    with torch.no_grad():
        want = ref.spectrogram({k: v.cpu() for k, v in batch.items()})
        got = model.to(DEVICE).spectrogram(batch)
    assert got.device.type == DEVICE.type and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=2e-3)


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

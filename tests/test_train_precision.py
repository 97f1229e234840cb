"""train.py's precision path on the CPU: fp16 autocast + GradScaler (the CUDA path) and bf16, one code path."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import train
from utils import checkpoint as ckpt
from utils.io import run_cli

SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off", "--grad_accumulation", "2"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_amp_dtype_trains_on_the_cpu_and_keeps_the_scaler_state(tiny_data, tmp_path, capsys, dtype):
    argv = ["-C", "cfg_2a", "--fold", "0", "--seed", "8", "--data_dir", str(tiny_data), "--output_dir",
            str(tmp_path), *SMALL, "--amp_dtype", dtype, "--epochs", "2"]
    assert run_cli(train.main, argv + ["--stop_after_epochs", "1"]) == 0
    assert f"amp {dtype}" in capsys.readouterr().out
    d = ckpt.run_dir(tmp_path, "cfg_2a", 0, 8)
    state = ckpt.load(d / ckpt.RESUME_FILE)
    scaler = state["scaler"]
    assert bool(scaler) == (dtype == "float16")  # fp16 scales the loss (scale saved for resume), bf16 does not
    # the optimiser is fused Adam (engine/step.make_optimizer) and took epoch 1's one step (3 batches, accumulation 2)
    assert [g["fused"] for g in state["optimizer"]["param_groups"]] == [True]
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}
    assert run_cli(train.main, argv + ["--resume"]) == 0
    logits = pd.read_csv(d / "val_logits.csv").iloc[:, 2:].to_numpy()
    assert np.isfinite(logits).all() and ckpt.is_finished(d)


def test_a_gpu_sized_config_on_the_cpu_says_what_it_needs_before_training(tiny_data, tmp_path, capsys):
    argv = ["-C", "cfg_2a", "--fold", "0", "--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "out"),
            "--neptune_mode", "off"]
    assert run_cli(train.main, argv) == 2  # batch 64 > the 6 tiny rows: stops before any training ...
    out = capsys.readouterr().out.strip().splitlines()
    notes = [ln for ln in out if ln.startswith("note: cfg_2a is sized for a GPU")]
    assert len(notes) == 1 and " GB " in notes[0] and "min per batch of 64" in notes[0]  # ... after saying so
    assert "--sq_dim 16" in notes[0] and "--frontend_filters 8" in notes[0]  # and how to make it small


def test_fp16_run_stopped_mid_accumulation_resumes_exactly_with_unscaled_pending_gradients(tiny_data, tmp_path):
    """6 rows, batch 1, accumulation 4: epoch 1 ends with 2 batches' gradients pending. Stopped there and
    resumed, the fp16 + GradScaler run ends as the uninterrupted one; the pending gradients are saved
    unscaled (the size of an fp32 run's, not 65536 times it), so resuming in another precision keeps them."""
    def argv(out, dtype, *extra):
        return ["-C", "cfg_2a", "--fold", "0", "--seed", "4", "--data_dir", str(tiny_data), "--output_dir",
                str(tmp_path / out), *SMALL, "--batch_size", "1", "--grad_accumulation", "4", "--epochs", "3",
                "--amp_dtype", dtype, "--sq_dropout", "0.0", "--channel_dropout_p", "0.0", *extra]

    assert run_cli(train.main, argv("whole", "float16")) == 0
    assert run_cli(train.main, argv("parts", "float16", "--stop_after_epochs", "1")) == 0
    assert run_cli(train.main, argv("fp32", "float32", "--stop_after_epochs", "1")) == 0
    parts, fp32 = (ckpt.run_dir(tmp_path / d, "cfg_2a", 0, 4) for d in ("parts", "fp32"))
    pending = [ckpt.load(d / ckpt.RESUME_FILE) for d in (parts, fp32)]
    assert pending[0]["step"] == 6 and pending[0]["scaler"]["scale"] == 2.0**16
    g16, g32 = (torch.cat([g.flatten() for g in s["grads_per_rank"][0] if g is not None]) for s in pending)
    assert 0.5 < float(g16.norm() / g32.norm()) < 2.0  # unscaled: an fp16 run's gradients, not x 65536
    # a resume state as written before pending gradients were saved per rank: rank 0's, times the loss scale
    old = ckpt.run_dir(tmp_path / "old", "cfg_2a", 0, 4)
    shutil.copytree(parts, old)
    state = dict(pending[0])
    state["grads"] = [None if g is None else g * state["scaler"]["scale"] for g in state.pop("grads_per_rank")[0]]
    ckpt.save(state, old / ckpt.RESUME_FILE)
    for out in ("parts", "old"):
        assert run_cli(train.main, argv(out, "float16", "--resume")) == 0
    whole = ckpt.run_dir(tmp_path / "whole", "cfg_2a", 0, 4)
    for resumed in (parts, old):
        pd.testing.assert_frame_equal(pd.read_csv(whole / "val_logits.csv"), pd.read_csv(resumed / "val_logits.csv"))
        wa, wb = (ckpt.load(d / ckpt.CHECKPOINT_FILE)["model"] for d in (whole, resumed))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)

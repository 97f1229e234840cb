"""train.py's precision path on the CPU: fp16 autocast + GradScaler (the CUDA path) and bf16, one code path."""
import numpy as np
import pandas as pd
import pytest

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

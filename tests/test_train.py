"""train.py end to end on tiny data: outputs, determinism, resume, Neptune failures, learning."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import train
from data.signal import LOGIT_COLS
from utils import checkpoint as ckpt
from engine.build import build_model
from engine.step import cosine_schedule
from utils.io import run_cli

# cfg_2a (mdl_2 + ds_2, curriculum reloads) shrunk so a CPU step takes about a second
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off"]


def train_args(data, out, *extra, config="cfg_2a", fold="0"):
    return ["-C", config, "--fold", fold, "--data_dir", str(data), "--output_dir", str(out), *SMALL, *extra]


def run_ok(args):
    assert run_cli(train.main, args) == 0
    return args


def folder(out, seed, fold=0, name="cfg_2a"):
    return ckpt.run_dir(out, name, fold, seed)


def test_one_epoch_writes_all_outputs(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    monkeypatch.delenv("NEPTUNE_DATA_DIRECTORY", raising=False)
    out = tmp_path / "out"
    args = train_args(tiny_data, out, "--epochs", "1", "--seed", "3", "--neptune_mode", "async")
    run_ok(args)
    printed = capsys.readouterr().out
    d = folder(out, 3)
    assert "val KL" in printed and "class prior" in printed
    assert printed.count("neptune: no NEPTUNE_API_TOKEN") == 1 and (d / "neptune" / "offline").is_dir()

    cfg = json.loads((d / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["epochs"] == 1 and cfg["sq_dim"] == 16 and cfg["name"] == "cfg_2a"

    val = pd.read_csv(tiny_data / "train_folded_6k6.csv").query("fold == 0")
    logits = pd.read_csv(d / "val_logits.csv")
    assert list(logits.columns) == ["eeg_id", "label_id", *LOGIT_COLS]
    assert logits["label_id"].tolist() == val["label_id"].tolist()
    assert np.isfinite(logits[LOGIT_COLS].to_numpy()).all()

    metrics = pd.read_csv(d / "metrics.csv")
    assert len(metrics) == 1 and metrics["step"].iloc[0] == 3  # 6 train rows // batch 2
    assert metrics["lr"].iloc[0] == pytest.approx(0.0, abs=1e-12)  # cosine reaches 0 at the last step
    assert metrics[["train_loss", "val_loss", "val_kl", "prior_kl"]].notna().all(axis=None)
    assert (d / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    state = torch.load(d / ckpt.CHECKPOINT_FILE, weights_only=True)
    model = build_model(train.parse_args(args)[0])
    model.load_state_dict(state["model"])
    assert state["seed"] == 3 and not (d / ckpt.RESUME_FILE).exists()

    # the same run folder again: refused, not overwritten
    mtime = (d / ckpt.CHECKPOINT_FILE).stat().st_mtime_ns
    assert run_cli(train.main, args) == 2
    assert "finished run" in capsys.readouterr().err
    assert (d / ckpt.CHECKPOINT_FILE).stat().st_mtime_ns == mtime
    run_ok(args + ["--force"])  # ... unless asked to retrain it
    assert (d / ckpt.CHECKPOINT_FILE).stat().st_mtime_ns != mtime


def test_random_seed_is_drawn_and_recorded_and_cpu_amp_runs(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "1", "--max_train_rows", "2", "--max_val_rows", "1",
                      "--cpu_amp", "True", "--grad_accumulation", "1"))  # one batch: one step
    assert "amp bfloat16" in capsys.readouterr().out
    (d,) = list((out / "cfg_2a" / "fold0").iterdir())
    seed = json.loads((d / "config.json").read_text())["seed"]
    assert d.name == f"seed{seed}" and seed >= 0
    assert len(pd.read_csv(d / "val_logits.csv")) == 1


def test_same_seed_same_logits_and_resume_equals_uninterrupted(tiny_data, tmp_path, capsys):
    # grad accumulation 2 over 3 batches per epoch leaves a half-accumulated gradient at the epoch end
    extra = ["--epochs", "2", "--seed", "5", "--grad_accumulation", "2", "--eval_epochs", "1"]
    run_ok(train_args(tiny_data, tmp_path / "a", *extra))
    run_ok(train_args(tiny_data, tmp_path / "b", *extra, "--stop_after_epochs", "1"))
    b = folder(tmp_path / "b", 5)
    assert (b / ckpt.RESUME_FILE).is_file() and not (b / ckpt.CHECKPOINT_FILE).exists()
    assert len(pd.read_csv(b / "metrics.csv")) == 1 and not (b / "val_logits.csv").exists()  # unfinished: no logits
    assert run_cli(train.main, train_args(tiny_data, tmp_path / "b", *extra)) == 2  # interrupted: needs --resume
    assert "--resume" in capsys.readouterr().err
    run_ok(train_args(tiny_data, tmp_path / "b", "--epochs", "2", "--grad_accumulation", "2", "--eval_epochs", "1",
                      "--resume"))  # no --seed: finds the one interrupted run
    run_ok(train_args(tiny_data, tmp_path / "c", *extra))
    a, c = folder(tmp_path / "a", 5), folder(tmp_path / "c", 5)

    la, lb, lc = (pd.read_csv(x / "val_logits.csv") for x in (a, b, c))
    pd.testing.assert_frame_equal(la, lc)  # same seed, same result
    pd.testing.assert_frame_equal(la, lb)  # resumed == uninterrupted
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv"))
    wa, wb = (torch.load(x / ckpt.CHECKPOINT_FILE, weights_only=True)["model"] for x in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    run_ok(train_args(tiny_data, tmp_path / "d", "--epochs", "2", "--seed", "6", "--grad_accumulation", "2"))
    ld = pd.read_csv(folder(tmp_path / "d", 6) / "val_logits.csv")
    assert not np.allclose(la[LOGIT_COLS], ld[LOGIT_COLS])  # the seed matters (the test above can fail)


class FailingRun:
    """Stands in for a neptune Run whose every call fails (network down, quota, bad project...)."""

    def __getitem__(self, key):
        raise RuntimeError("neptune is down")

    def __setitem__(self, key, value):
        raise RuntimeError("neptune is down")

    def stop(self):
        raise RuntimeError("neptune is down")


@pytest.mark.parametrize("failure", ["init", "calls"])
def test_neptune_failure_never_stops_training(tiny_data, tmp_path, capsys, monkeypatch, failure):
    import neptune

    def init_run(**kwargs):
        if failure == "init":
            raise ConnectionError("no route to host")
        return FailingRun()

    monkeypatch.setattr(neptune, "init_run", init_run)
    monkeypatch.setenv("NEPTUNE_API_TOKEN", "fake")
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "1", "--seed", "1", "--max_train_rows", "2", "--grad_accumulation", "1",
                      "--neptune_mode", "async"))
    assert "neptune: disabled after error" in capsys.readouterr().out
    d = folder(out, 1)
    assert (d / ckpt.CHECKPOINT_FILE).is_file() and len(pd.read_csv(d / "metrics.csv")) == 1


def test_bad_fold_and_too_large_batch_are_errors(tiny_data, tmp_path, capsys):
    assert run_cli(train.main, train_args(tiny_data, tmp_path, "--epochs", "1", fold="7")) == 2
    assert "--fold" in capsys.readouterr().err
    assert run_cli(train.main, train_args(tiny_data, tmp_path, "--batch_size", "64")) == 2
    assert "--batch_size" in capsys.readouterr().err
    assert run_cli(train.main, train_args(tiny_data / "nope", tmp_path)) == 2
    assert "not found" in capsys.readouterr().err


def test_fold_minus_one_trains_on_all_rows_and_validates_on_fold_0(tiny_data, tmp_path):
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "1", "--seed", "2", "--batch_size", "4", "--grad_accumulation", "1",
                      fold="-1"))  # 2 batches of 4: accumulation 1 so that the optimiser steps
    d = folder(out, 2, fold=-1)
    assert json.loads((d / "run_info.json").read_text())["train_rows"] == 8
    val = pd.read_csv(tiny_data / "train_folded_6k6.csv").query("fold == 0")
    assert pd.read_csv(d / "val_logits.csv")["label_id"].tolist() == val["label_id"].tolist()
    assert pd.read_csv(d / "metrics.csv")["step"].iloc[0] == 2  # 8 rows // 4


def test_schedule_steps_every_batch_and_optimizer_every_accumulation():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    sched = cosine_schedule(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0, 0.0])


def test_small_config_learns_on_synthetic_data(tmp_path):
    """The loss on synthetic training rows falls and validation beats the class prior (64 CPU steps)."""
    from data.folds import make_folds
    from data.selection import write_training_sets
    from data.synthetic import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, seed=1, n_patients=30, n_test=1, progress=False)
    make_folds(pd.read_csv(data / "train.csv"), 4, 0).to_csv(data / "train_folded.csv", index=False)
    write_training_sets(data)
    out = tmp_path / "out"
    # curriculum weights frozen at their epoch-0 values so the loss compares like with like
    run_ok(train_args(data, out, "--epochs", "2", "--seed", "1", "--batch_size", "4", "--lr", "3e-3",
                      "--grad_accumulation", "1", "--eval_epochs", "2", "--reload_train_loader", "False"))
    m = pd.read_csv(folder(out, 1) / "metrics.csv")
    assert m["step"].iloc[-1] == 64  # 128 training rows of folds 1-3 // batch 4, 2 epochs
    assert m["train_loss"].iloc[-1] < 0.85 * m["train_loss"].iloc[0]  # measured: 1.90 -> 1.43
    final = m.iloc[-1]
    assert final["val_kl"] < final["prior_kl"] - 0.1, final.to_dict()  # measured: 0.74 vs 1.06
    assert final["oracle_kl"] < final["val_kl"]

"""A run's bookkeeping: finished means a complete checkpoint, --force never loses the old run, seeds mean the
same with any worker count, leaking folds are refused, and failures are one line that leave no folder."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import train
from data.signal import LOGIT_COLS
from inference import ensemble
from inference import blend
from utils import checkpoint as ckpt
from utils.io import run_cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--neptune_mode", "off", "--grad_accumulation", "1"]


def args(data, out, *extra, config="cfg_2a"):
    return ["-C", config, "--fold", "0", "--data_dir", str(data), "--output_dir", str(out), *SMALL, *extra]


def run_ok(argv):
    assert run_cli(train.main, argv) == 0


def logits(out, seed):
    return pd.read_csv(ckpt.run_dir(out, "cfg_2a", 0, seed) / "val_logits.csv")


def test_same_seed_same_result_with_0_1_2_workers_and_resume_across_worker_counts(tiny_data, tmp_path):
    for w in (0, 1, 2):
        run_ok(args(tiny_data, tmp_path / f"w{w}", "--epochs", "2", "--seed", "4", "--num_workers", str(w)))
    ref = logits(tmp_path / "w0", 4)
    pd.testing.assert_frame_equal(ref, logits(tmp_path / "w1", 4))
    pd.testing.assert_frame_equal(ref, logits(tmp_path / "w2", 4))
    # interrupted with 2 workers, resumed with none: ends as the uninterrupted run
    run_ok(args(tiny_data, tmp_path / "r", "--epochs", "2", "--seed", "4", "--num_workers", "2",
                "--stop_after_epochs", "1"))
    run_ok(args(tiny_data, tmp_path / "r", "--epochs", "2", "--seed", "4", "--num_workers", "0", "--resume"))
    pd.testing.assert_frame_equal(ref, logits(tmp_path / "r", 4))
    run_ok(args(tiny_data, tmp_path / "s", "--epochs", "2", "--seed", "9", "--num_workers", "0"))
    assert not ref.equals(logits(tmp_path / "s", 9))  # the comparison above can fail


def test_interrupted_force_keeps_the_old_run_whole(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    base = args(tiny_data, out, "--seed", "5", "--num_workers", "0")
    run_ok(base + ["--epochs", "1"])
    d = ckpt.run_dir(out, "cfg_2a", 0, 5)
    old_ckpt, old_logits = (d / ckpt.CHECKPOINT_FILE).read_bytes(), (d / "val_logits.csv").read_bytes()
    run_ok(base + ["--epochs", "2", "--force", "--stop_after_epochs", "1"])  # interrupted retrain
    assert (d / ckpt.CHECKPOINT_FILE).read_bytes() == old_ckpt and (d / "val_logits.csv").read_bytes() == old_logits
    assert '"epochs": 1' in (d / "config.json").read_text()
    assert ckpt.is_interrupted(ckpt.staging_dir(d))
    # blend and predict agree: the old run is the finished one
    assert ckpt.finished_runs(out, "cfg_2a") == [d]
    oof, _, n = blend.config_oof(out, "cfg_2a", folds=(0,))
    old = pd.read_csv(d / "val_logits.csv")
    assert n == 1 and oof[LOGIT_COLS].to_numpy().tolist() == old[LOGIT_COLS].to_numpy().tolist()
    blend_file = tmp_path / "blend.json"
    blend_file.write_text(json.dumps({"weights": {"cfg_2a": 1.0}, "bias": [0.0] * 6}))
    _, runs = ensemble.load_ensemble(out, blend_file, tiny_data)
    assert [(r, c.epochs) for r, c in runs["cfg_2a"]] == [(d, 1)]  # the old run and its config
    # resuming the retrain finishes it and only then replaces the old run
    run_ok(base + ["--epochs", "2", "--force", "--resume"])
    assert (d / ckpt.CHECKPOINT_FILE).read_bytes() != old_ckpt and '"epochs": 2' in (d / "config.json").read_text()
    assert not ckpt.staging_dir(d).exists() and ckpt.is_finished(d)
    assert sorted(p.name for p in d.parent.iterdir()) == ["seed5"]


def test_zero_length_checkpoint_is_named_and_trained_again(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    base = args(tiny_data, out, "--seed", "6", "--num_workers", "0", "--epochs", "1")
    run_ok(base)
    d = ckpt.run_dir(out, "cfg_2a", 0, 6)
    (d / ckpt.CHECKPOINT_FILE).write_bytes(b"")  # a power loss before the data reached the disk
    assert ckpt.run_state(d) == ckpt.NOT_STARTED and ckpt.checkpoint_problem(d / ckpt.CHECKPOINT_FILE) == "zero-length file"
    assert ckpt.finished_runs(out, "cfg_2a") == [] and blend.config_oof(out, "cfg_2a", folds=(0,))[0] is None
    capsys.readouterr()
    run_ok(base)  # not finished, so no --force needed
    assert "zero-length" in capsys.readouterr().out and ckpt.is_finished(d)


KILL_WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from utils import checkpoint as ckpt
path = sys.argv[1]
ckpt.save({{"version": 0, "x": torch.zeros(2_000_000)}}, path)
print("ready", flush=True)
v = 1
while True:
    ckpt.save({{"version": v, "x": torch.full((2_000_000,), float(v))}}, path)
    v += 1
"""


def test_sigkill_while_writing_a_checkpoint_loses_nothing_written_before(tmp_path):
    path = tmp_path / "checkpoint.pth"
    for delay in (0.05, 0.2, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER.format(root=str(ROOT)), str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert ckpt.checkpoint_problem(path) is None
        state = torch.load(path, weights_only=True)
        assert float(state["x"][0]) == state["version"] and float(state["x"][-1]) == state["version"]
        for tmp in tmp_path.glob(".checkpoint.pth.*.tmp"):  # the killed write's own temporary file
            tmp.unlink()


def test_a_fold_sharing_a_patient_with_its_validation_rows_is_refused(tiny_data, tmp_path, capsys):
    for name in ("train_folded_6k6c_1up.csv", "train_folded_6k6.csv"):
        df = pd.read_csv(tiny_data / name)
        df["patient_id"] = df["eeg_id"] % 2  # patients now span folds
        df.to_csv(tiny_data / name, index=False)
    assert run_cli(train.main, args(tiny_data, tmp_path / "out", "--seed", "1", "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fold 0:" in err and "patient_id value(s) in both" in err
    assert not (tmp_path / "out").exists()


def test_missing_parquet_with_workers_is_one_line_and_leaves_no_folder(tiny_data, tmp_path):
    train_rows = pd.read_csv(tiny_data / "train_folded_6k6c_1up.csv").query("fold != 0")
    victim = tiny_data / "train_eegs" / f"{int(train_rows['eeg_id'].iloc[0])}.parquet"
    victim.unlink()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"),
                           *args(tiny_data, out, "--seed", "2", "--epochs", "1", "--num_workers", "2")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "%|" not in ln]  # progress bars aside
    assert lines == [f"error: {victim}: eeg file not found"], proc.stderr
    assert not ckpt.run_dir(out, "cfg_2a", 0, 2).exists()


def test_resume_after_a_precision_or_device_change_works_and_says_so(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    base = args(tiny_data, out, "--seed", "3", "--num_workers", "0", "--epochs", "2")
    run_ok(base + ["--cpu_amp", "True", "--stop_after_epochs", "1"])
    d = ckpt.run_dir(out, "cfg_2a", 0, 3)
    state = ckpt.load(d / ckpt.RESUME_FILE)
    state["device"] = "cuda"  # as if the first epoch had run on a GPU
    ckpt.save(state, d / ckpt.RESUME_FILE)
    capsys.readouterr()
    run_ok(base + ["--cpu_amp", "False", "--resume"])
    text = capsys.readouterr().out
    assert "resuming with device cpu (was cuda), precision float32 (was bfloat16)" in text
    assert ckpt.is_finished(d)


def test_failed_pretrained_download_is_one_quick_line(tiny_data, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-C", "cfg_3", "--data_dir", str(tiny_data),
                           "--output_dir", str(tmp_path / "out"), "--epochs", "1", "--seed", "1", "--batch_size", "2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrained mixnet_l weights" in lines[0] and "--pretrained False" in lines[0], proc.stderr
    assert time.perf_counter() - t0 < 60  # one check, no minutes of retries
    assert not (tmp_path / "out").exists()

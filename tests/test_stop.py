"""Stopping inside an epoch and going on (utils/stop.py, train.py): a run stopped after any batch, by
--stop_after_steps, Ctrl-C or SIGTERM to the whole process group (as a terminal or scancel send them; with
loader workers), SIGTERM to train.py alone, stopping ./run_train.sh, or SIGTERM to torchrun under DDP
(tests/test_ddp.py), resumes from that batch and ends with the val_logits.csv,
the per-epoch training losses and the weights of the run that was never stopped."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import train
from conftest import grow, write_tiny_data
from utils import checkpoint as ckpt
from utils.io import run_cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1", "--batch_size", "2",
         "--neptune_mode", "off"]
STEPS = 15  # 30 training rows (fold 0 of grow(tiny_data, 5, 2)) in batches of 2


def argv(data, out, *extra, workers=0):
    return [str(a) for a in ["-C", "cfg_2a", "--fold", "0", "--seed", "6", "--epochs", "2", "--grad_accumulation", "2",
                             "--data_dir", data, "--train_df", "ddp_train.csv", "--val_df", "ddp_val.csv",
                             "--output_dir", out, "--num_workers", workers, *SMALL, *extra]]


def assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(a / "val_logits.csv"), pd.read_csv(b / "val_logits.csv"),
                                  check_exact=True)
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert ma["train_loss"].tolist() == mb["train_loss"].tolist()
    wa, wb = (ckpt.load(d / ckpt.CHECKPOINT_FILE)["model"] for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run never stopped (module-wide: every test compares with it)."""
    root = tmp_path_factory.mktemp("ref")
    data = grow(write_tiny_data(root / "data"), train_copies=5, val_copies=2)
    assert run_cli(train.main, argv(data, root / "out")) == 0
    return data, ckpt.run_dir(root / "out", "cfg_2a", 0, 6)


@pytest.mark.parametrize("steps", [5, STEPS, STEPS + 4])
def test_stop_after_any_batch_then_resume_equals_the_uninterrupted_run(reference, tmp_path, steps):
    data, ref = reference
    out = tmp_path / "out"
    assert run_cli(train.main, argv(data, out, "--stop_after_steps", steps)) == 0
    run = ckpt.run_dir(out, "cfg_2a", 0, 6)
    state = ckpt.load(run / ckpt.RESUME_FILE)
    assert (state["epoch"], state["batch"], state["step"]) == ((steps // STEPS) - 1, steps % STEPS, steps)
    if steps % 2:  # accumulation 2: one batch's gradients were pending when it stopped
        assert any(g is not None and g.abs().sum() > 0 for g in state["grads_per_rank"][0])
    assert run_cli(train.main, argv(data, out, "--resume")) == 0
    assert_same_run(ref, run)


def start(args, **kw) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                                      "OMP_NUM_THREADS": str(torch.get_num_threads())}, **kw)  # as in here: the same roundings
    return proc


def wait_for_training(proc) -> list[str]:
    """Lines up to the run's header (printed once stop signals only ask for a stop)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " -> " in line and "train /" in line:
            return lines
    raise AssertionError("".join(lines))


SIGNALS = {"ctrl-c to the process group, 2 loader workers": (signal.SIGINT, True, 2),  # as a terminal sends it
           "sigterm to the process group, 2 loader workers": (signal.SIGTERM, True, 2),  # as scancel, preemption
           "sigterm": (signal.SIGTERM, False, 0), "sigusr1 (slurm's warning)": (signal.SIGUSR1, False, 0)}


@pytest.mark.parametrize("how", SIGNALS)
def test_a_signal_mid_epoch_saves_the_position_and_resume_equals_the_uninterrupted_run(reference, tmp_path, how):
    data, ref = reference
    out = tmp_path / "out"
    sig, group, workers = SIGNALS[how]
    proc = start(argv(data, out, workers=workers), start_new_session=True)
    lines = wait_for_training(proc)
    if group:
        os.killpg(proc.pid, sig)  # train.py and its loader workers
    else:
        proc.send_signal(sig)
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 128 + sig, text
    state = ckpt.load(ckpt.run_dir(out, "cfg_2a", 0, 6) / ckpt.RESUME_FILE)
    assert state["epoch"] == -1 and 0 < state["batch"] < STEPS, text  # inside the first epoch
    assert f"stopped by {sig.name} in epoch 1 after batch {state['batch']}/{STEPS}" in text
    assert "Traceback" not in text and "exited unexpectedly" not in text
    assert run_cli(train.main, argv(data, out, "--resume")) == 0
    assert_same_run(ref, ckpt.run_dir(out, "cfg_2a", 0, 6))


def test_resuming_a_mid_epoch_stop_with_another_batch_size_or_process_count_is_one_line(reference, tmp_path, capsys):
    data, _ = reference
    out = tmp_path / "out"
    assert run_cli(train.main, argv(data, out, "--stop_after_steps", "3")) == 0
    path = ckpt.run_dir(out, "cfg_2a", 0, 6) / ckpt.RESUME_FILE
    state = ckpt.load(path)
    capsys.readouterr()
    assert run_cli(train.main, argv(data, out, "--resume", "--batch_size", "3")) == 2
    assert "stopped inside epoch 1 at --batch_size 2; resume it with that batch size" in capsys.readouterr().err
    state["epoch_loss"] = state["epoch_loss"] * 2  # as if written by 2 processes
    ckpt.save(state, path)
    assert run_cli(train.main, argv(data, out, "--resume")) == 2
    assert "stopped inside epoch 1 with 2 process(es); resume it with 2" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm to the sweep"])
def test_stopping_run_train_sh_saves_the_runs_place_and_the_next_start_ends_as_the_uninterrupted_run(
        reference, tmp_path, how):
    """Ctrl-C reaches the sweep and its train.py (one process group); SIGTERM reaches the sweep only, which
    passes it on. Either way the run saves its place inside the epoch; ./run_train.sh again finishes it."""
    data, ref = reference
    out = tmp_path / "out"
    over = argv(data, out)[6:]  # all but -C, --fold, --seed: the sweep sets those
    cmd = ["bash", "run_train.sh", "--configs", "cfg_2a", "--folds", "0", "--seeds", "6", "--", *over]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    lines = wait_for_training(sweep)  # the sweep shows train.py's output on the console
    if how == "ctrl-c":
        os.killpg(sweep.pid, signal.SIGINT)
    else:
        sweep.send_signal(signal.SIGTERM)
    text = "".join(lines) + sweep.stdout.read()
    sweep.wait(timeout=120)
    assert sweep.returncode == (130 if how == "ctrl-c" else 143), text
    run = ckpt.run_dir(out, "cfg_2a", 0, 6)
    state = ckpt.load(run / ckpt.RESUME_FILE)
    assert state["epoch"] == -1 and 0 < state["batch"] < STEPS, text
    assert f"after batch {state['batch']}/{STEPS}" in text and "Traceback" not in text
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert_same_run(ref, run)

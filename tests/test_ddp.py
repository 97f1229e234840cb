"""Two DDP processes on the CPU (gloo through torchrun) against independent single-process references.

- Training steps: train.py's build() and train_epoch() under DDP with accumulation 2, clipping and 4+ optimiser
  steps per epoch over 2 epochs (one epoch ends mid-accumulation): both ranks hold identical parameters after
  every epoch, equal to a reference written here with plain torch that feeds each rank's batches separately,
  divides each rank's accumulated gradients by the world size and sums them (DDP's all-reduce), unscales,
  clips, sets the cosine learning rate and steps a plain Adam; fp32, fp16 (GradScaler) and bf16.
- Resume: a 2-process torchrun run of train.py stopped after an epoch that ends mid-accumulation and resumed
  writes the val_logits.csv and weights of the uninterrupted run.
- Validation: every config's checkpoint validated by 2 processes gives the logits one process gives.
"""
import contextlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import default_collate

import train
from configs.ensemble import CONFIGS
from conftest import grow
from data.signal import LOGIT_COLS
from data.rows import read_rows
from engine.evaluate import predict_logits
from engine.build import batch_hook, build_dataset, build_model
from utils import checkpoint as ckpt
from utils.config import load_config
from utils.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1", "--num_workers", "0",
         "--neptune_mode", "off", "--batch_size", "2"]
NO_DROPOUT = ["--sq_dropout", "0.0", "--channel_dropout_p", "0.0"]


def torchrun(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--log-dir", str(Path(cwd) / "torchrun_logs"), *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, cwd=cwd,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cosine_lr(base: float, t: int, total: int) -> float:
    """docs/solution.md §7: cosine from lr to 0 over all batches, no warm-up; t scheduler steps taken."""
    return base * 0.5 * (1 + math.cos(math.pi * min(t / total, 1.0)))


def reference(cfg, init, keys, amp_dtype: str, world: int) -> tuple[list, int]:
    """The parameters after every epoch of the training DDP should do, in one process; and how often the
    gradient norm was above clip_grad (so the test knows clipping acted)."""
    model = build_model(cfg).train()
    with torch.no_grad():
        for p, q in zip(model.parameters(), init):
            p.copy_(q)
    params = list(model.parameters())
    ds = build_dataset(read_rows(cfg)[0], cfg, mode="train")
    hook = batch_hook(cfg)
    # torch's fused Adam, as train.py builds: under fp16 the per-tensor loop's last-bit differences flip fp16
    # roundings of the next forward, and Adam's sign-like early steps carry them to ~1e-4
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=amp_dtype == "float16")
    autocast = (torch.autocast("cpu", dtype=getattr(torch, amp_dtype)) if amp_dtype != "float32" else None)
    b, acc_n = cfg.batch_size, cfg.grad_accumulation
    n_batches = len(keys[0][0]) // b
    total, step, clipped = cfg.epochs * n_batches, 0, 0
    acc = [None] * world  # each rank's own accumulated gradients (DDP's no_sync micro-steps)
    after = []
    for epoch in range(cfg.epochs):
        for i in range(n_batches):
            step += 1
            for r in range(world):
                for p, g in zip(params, acc[r] or [None] * len(params)):
                    p.grad = None if g is None else g.clone()
                batch = hook(default_collate([ds[k] for k in keys[epoch][r][i * b:(i + 1) * b]]), cfg, epoch)
                with autocast or torch.autocast("cpu", enabled=False):
                    loss = model(batch)["loss"]
                scaler.scale(loss / acc_n).backward()
                acc[r] = [p.grad.clone() for p in params]
            if step % acc_n == 0:
                for j, p in enumerate(params):
                    p.grad = sum(acc[r][j] / world for r in range(world))
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(cfg.lr, step - 1, total)
                scaler.unscale_(opt)
                clipped += float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)) > cfg.clip_grad
                scaler.step(opt)
                scaler.update()
                acc = [None] * world
        after.append([p.detach().clone() for p in params])
    return after, clipped


@pytest.mark.parametrize("amp_dtype", ["float32", "float16", "bfloat16"])
def test_ddp_training_steps_equal_an_independent_single_process_reference(tiny_data, tmp_path, amp_dtype):
    data = grow(tiny_data, train_copies=6, val_copies=1)
    args = ["-C", "cfg_2a", "--fold", "0", "--seed", "3", "--epochs", "2", "--grad_accumulation", "2",
            "--clip_grad", "0.05", "--lr", "3e-3", "--data_dir", data, "--output_dir", tmp_path / "out",
            "--train_df", "ddp_train.csv", "--val_df", "ddp_val.csv", "--amp_dtype", amp_dtype, *SMALL, *NO_DROPOUT]
    args = [str(a) for a in args]
    torchrun(ROOT / "tests" / "ddp_train_worker.py", "train", tmp_path, *args, cwd=tmp_path)
    cfg = train.parse_args(args)[0]
    cfg.seed = 3
    saved = [[torch.load(tmp_path / f"rank{r}_epoch{e}.pt") for r in range(2)] for e in range(cfg.epochs)]
    keys = [[s["keys"] for s in per_rank] for per_rank in saved]
    assert len(keys[0][0]) == 18 and set(keys[0][0]).isdisjoint(keys[0][1])  # 36 rows: 9 batches per rank
    init = torch.load(tmp_path / "rank0_init.pt")
    with one_thread():  # as the workers (OMP_NUM_THREADS=1): the same kernels, the same roundings
        expected, clipped = reference(cfg, init, keys, amp_dtype, world=2)
    assert clipped >= 4  # clipping acted
    for e in range(cfg.epochs):
        a, b = (saved[e][r]["params"] for r in range(2))
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"ranks differ after epoch {e}"
        moved = max(float((x - i).abs().max()) for x, i in zip(a, init))
        assert moved > 1e-3  # the optimiser stepped
        for x, y in zip(a, expected[e]):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_ddp_run_stopped_mid_accumulation_and_resumed_equals_the_uninterrupted_run(tiny_data, tmp_path):
    """The issue's check: torchrun, accumulation 3, 7 batches per rank per epoch (28 rows over 2 ranks)."""
    data = grow(tiny_data, train_copies=5, val_copies=3)
    base = ["-C", "cfg_2a", "--fold", "0", "--seed", "5", "--epochs", "3", "--grad_accumulation", "3",
            "--data_dir", data, "--train_df", "ddp_train.csv", "--val_df", "ddp_val.csv", "--max_train_rows", "28",
            *SMALL]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(ROOT / "train.py", *base, "--output_dir", whole, cwd=tmp_path)
    torchrun(ROOT / "train.py", *base, "--output_dir", parts, "--stop_after_epochs", "1", cwd=tmp_path)
    state = ckpt.load(ckpt.run_dir(parts, "cfg_2a", 0, 5) / ckpt.RESUME_FILE)
    assert state["step"] == 7 and len(state["grads_per_rank"]) == 2  # 7 % 3: one batch's gradients pending
    g0, g1 = (torch.cat([g.flatten() for g in grads if g is not None]) for grads in state["grads_per_rank"])
    assert not torch.equal(g0, g1)  # each rank's own
    torchrun(ROOT / "train.py", *base, "--output_dir", parts, "--resume", cwd=tmp_path)
    a, b = (ckpt.run_dir(d, "cfg_2a", 0, 5) for d in (whole, parts))
    pd.testing.assert_frame_equal(pd.read_csv(a / "val_logits.csv"), pd.read_csv(b / "val_logits.csv"),
                                  check_exact=False, rtol=0, atol=1e-6)
    wa, wb = (ckpt.load(d / ckpt.CHECKPOINT_FILE)["model"] for d in (a, b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resume_equals_the_uninterrupted_run(tiny_data, tmp_path):
    """As SLURM or the sweep stop a DDP run: SIGTERM to torchrun, which hands it to the ranks; they agree on the
    step at a loss read (every 2 steps here), save the position inside the epoch, and a resume goes on from it."""
    data = grow(tiny_data, train_copies=10, val_copies=2)  # 60 rows: 15 batches of 2 per rank
    base = [str(a) for a in ["-C", "cfg_2a", "--fold", "0", "--seed", "5", "--epochs", "2", "--grad_accumulation", "2",
                             "--log_every", "2", "--data_dir", data, "--train_df", "ddp_train.csv", "--val_df",
                             "ddp_val.csv", *SMALL]]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(ROOT / "train.py", *base, "--output_dir", whole, cwd=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "train.py"), *base, "--output_dir", str(parts)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "train /" in line and " -> " in line:  # the header: the ranks are in the training loop
            break
    proc.send_signal(signal.SIGTERM)
    seen.append(proc.stdout.read())
    proc.wait(timeout=120)
    text = "".join(seen)
    state = ckpt.load(ckpt.run_dir(parts, "cfg_2a", 0, 5) / ckpt.RESUME_FILE)
    assert state["epoch"] == -1 and 0 < state["batch"] < 15 and state["batch"] % 2 == 0, text
    assert len(state["epoch_loss"]) == 2 and len(state["grads_per_rank"]) == 2
    assert f"stopped by SIGTERM in epoch 1 after batch {state['batch']}/15" in text
    torchrun(ROOT / "train.py", *base, "--output_dir", parts, "--resume", cwd=tmp_path)
    a, b = (ckpt.run_dir(d, "cfg_2a", 0, 5) for d in (whole, parts))
    pd.testing.assert_frame_equal(pd.read_csv(a / "val_logits.csv"), pd.read_csv(b / "val_logits.csv"),
                                  check_exact=False, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pd.read_csv(a / "metrics.csv")["train_loss"], pd.read_csv(b / "metrics.csv")["train_loss"],
                               rtol=1e-6)


def small_config(name: str):
    """Each config at a CPU size (its own model family, dataset and mels; a tiny backbone)."""
    cfg = load_config(name)
    cfg.pretrained, cfg.seed, cfg.batch_size_val = False, 1, 3
    if cfg.top_db is not None:
        cfg.top_db = 20.0  # mdl_4's batch-wide dB floor bites on these rows (at 100 dB it would not)
    if cfg.model == "mdl_2":
        cfg.frontend_filters, cfg.sq_dim, cfg.sq_heads, cfg.sq_layers = 8, 16, 2, 1
    else:
        cfg.backbone = "test_efficientnet"
        cfg.spec_args = dict(cfg.spec_args, n_mels=16, hop_length=cfg.spec_args["hop_length"] * 4)
        if getattr(cfg, "spec_args_center", None):
            cfg.spec_args_center = dict(cfg.spec_args_center, n_mels=16, hop_length=cfg.spec_args_center["hop_length"] * 8)
    return cfg


def test_validation_with_two_processes_equals_one_for_every_config(tiny_data, tmp_path):
    """Fixed validation batches of batch_size_val (3 here) whatever the world size: 7 rows are the batches
    [0-2], [3-5], [6] for 1 and 2 processes alike, so even mdl_4's batch-wide dB floor (cfg_4, cfg_5a-d)
    gives the same logits; gathered in row order."""
    rows = pd.read_csv(grow(tiny_data, 1, 4) / "ddp_val.csv").query("fold == 0").head(7).reset_index(drop=True)
    jobs, expected = [], {}
    with one_thread():
        for name in CONFIGS:
            cfg = small_config(name)
            cfg.data_dir = str(tiny_data)
            torch.manual_seed(0)
            model = build_model(cfg).eval()
            jobs.append((name, cfg, model.state_dict(), rows))
            expected[name], _ = predict_logits(model, build_dataset(rows, cfg, mode="val"), cfg, DistInfo(),
                                                     train.autocast_ctx("float32", torch.device("cpu")))
    torch.save(jobs, tmp_path / "jobs.pt")
    torchrun(ROOT / "tests" / "ddp_train_worker.py", "validate", tmp_path, tmp_path / "jobs.pt", cwd=tmp_path)
    for name in CONFIGS:
        got = torch.load(tmp_path / f"val_{name}.pt").numpy()
        assert got.shape == (7, len(LOGIT_COLS))
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected[name]).max()),
                                   err_msg=name)

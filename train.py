"""Train one config on one fold with one seed (SPEC sections 7-8).

    python train.py -C cfg_5a --fold 0 [--seed 7] [--any_config_field value ...] [--resume] [--force]
    torchrun --nproc_per_node 4 train.py -C cfg_5a --fold 0      # one run on 4 GPUs (DDP)
    --resume: continue an interrupted run; --force: retrain a finished one;
    --stop_after_epochs N: stop (resumably) after epoch N, e.g. to split a long run

Loop as in the reference (Henkel-style): Adam, cosine decay to 0 without warm-up over
epochs * (train rows // batch_size) scheduler steps; the scheduler steps after *every* batch while
the optimiser steps every `grad_accumulation` batches (a global batch counter, so accumulation
carries over epoch ends as in the reference); gradients clipped to `clip_grad` after unscaling;
fp16 autocast + GradScaler on CUDA when `mixed_precision`, bf16 autocast on CPU only with
`cpu_amp`. Outputs go to <output_dir>/<name>/fold<fold>/seed<seed>/: config.json (resolved config),
run_info.json, metrics.csv (per epoch), last_state.pth (resume state, removed at the end), and at the
end val_logits.csv (eeg_id, label_id, raw logits), learning_curve.png and checkpoint.pth (written last:
its presence marks a finished run). DDP: per-process batch = batch_size, validation rows split into
contiguous per-rank slices and gathered in row order, only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.signal import LABEL_COLS, LOGIT_COLS  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils import distributed as dist_utils  # noqa: E402
from utils import metric  # noqa: E402
from utils.build import build_dataset, build_model  # noqa: E402
from utils.config import ConfigError, apply_overrides, cfg_to_dict, load_config  # noqa: E402
from utils.io import (DataError, atomic_write, atomic_write_csv, atomic_write_text, read_csv_checked,  # noqa: E402
                      require_dir, run_cli)
from utils.seed import draw_seed, get_rng_state, seed_everything, set_rng_state, worker_init_fn  # noqa: E402
from utils.tracking import Tracker  # noqa: E402

USAGE = __doc__.split("\n\n")[1]
FLAGS = {"--resume": "resume", "--force": "force"}


# --- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str]):
    """-C/--config NAME, --resume, --force, --stop_after_epochs N (test hook: simulate an interruption);
    everything else is a config override (`--field value`)."""
    opts = {"config": None, "resume": False, "force": False, "stop_after_epochs": None}
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg in FLAGS:
            opts[FLAGS[arg]] = True
        elif arg in ("-C", "--config", "--stop_after_epochs") or arg.startswith(("--config=", "--stop_after_epochs=")):
            key, _, value = arg.partition("=")
            if not value:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{key} needs a value")
                value, i = argv[i + 1], i + 1
            if key == "--stop_after_epochs":
                try:
                    opts["stop_after_epochs"] = int(value)
                except ValueError:
                    raise ConfigError(f"bad value for --stop_after_epochs: '{value}'") from None
            else:
                opts["config"] = value
        else:
            rest.append(arg)
        i += 1
    if not opts["config"]:
        raise ConfigError("no config given: use -C cfg_name (e.g. -C cfg_5a)")
    cfg = apply_overrides(load_config(opts["config"]), rest)
    check_cfg(cfg)
    return cfg, opts


def check_cfg(cfg) -> None:
    for key, low in (("epochs", 1), ("batch_size", 1), ("grad_accumulation", 1), ("eval_epochs", 1),
                     ("fold", -1), ("num_workers", 0)):
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"bad value for --{key}: {value!r} (an integer >= {low})")
    if cfg.optimizer != "Adam":
        raise ConfigError(f"bad value for --optimizer: {cfg.optimizer!r} (only Adam is implemented)")
    if cfg.schedule != "cosine":
        raise ConfigError(f"bad value for --schedule: {cfg.schedule!r} (only cosine is implemented)")


# --- data -----------------------------------------------------------------------------------------
def read_rows(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train rows: fold != f (fold -1: all); validation rows: golden rows of fold f (fold -1: fold 0)."""
    data_dir = require_dir(cfg.data_dir)
    need = ("eeg_id", "label_id", "eeg_label_offset_seconds", "fold", *LABEL_COLS)
    train = read_csv_checked(data_dir / cfg.train_df, need, what="training csv")
    val = read_csv_checked(data_dir / cfg.val_df, need, what="validation csv")
    folds = sorted(int(f) for f in train["fold"].unique())
    if cfg.fold != -1 and cfg.fold not in folds:
        raise ConfigError(f"bad value for --fold: {cfg.fold} is not a fold of {data_dir / cfg.train_df} "
                          f"(folds {folds}; -1 trains on all rows)")
    val_fold = 0 if cfg.fold == -1 else cfg.fold
    train = train if cfg.fold == -1 else train[train["fold"] != cfg.fold]
    val = val[val["fold"] == val_fold]
    if cfg.max_train_rows:
        train = train.head(cfg.max_train_rows)
    if cfg.max_val_rows:
        val = val.head(cfg.max_val_rows)
    if len(train) == 0:
        raise DataError(f"{data_dir / cfg.train_df}: no training rows for fold {cfg.fold}")
    if len(val) == 0:
        raise DataError(f"{data_dir / cfg.val_df}: no validation rows in fold {val_fold}")
    return train.reset_index(drop=True), val.reset_index(drop=True)


def vote_shares(df: pd.DataFrame) -> np.ndarray:
    return metric.votes_to_target(df[LABEL_COLS].to_numpy())


def train_loader(cfg, df, info, generator, epoch):
    """Build the (curriculum-aware) train dataset and loader for `epoch`; drop_last as the reference."""
    cfg.curr_epoch = epoch
    ds = build_dataset(df, cfg, mode="train")
    sampler = None
    if info.distributed:
        sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                      num_workers=n_workers(cfg, info), generator=generator, worker_init_fn=worker_init_fn,
                      pin_memory=info.device.type == "cuda")


def n_workers(cfg, info) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cfg.num_workers, cpus // info.world_size))


def steps_per_epoch(n_rows: int, cfg, info) -> int:
    per_rank = math.ceil(n_rows / info.world_size) if info.distributed else n_rows
    return per_rank // cfg.batch_size


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast_for(cfg, device):
    if device.type == "cuda" and cfg.mixed_precision:
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cfg.cpu_amp:
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def cosine_schedule(optimizer, total_steps: int):
    """Cosine from lr to 0 over total_steps, no warm-up (held at 0 beyond the end)."""
    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- validation -----------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, ds, cfg, info, autocast) -> tuple[np.ndarray, float | None]:
    """Logits for every row of `ds` in row order; ranks take contiguous slices (no padding) and rank 0
    concatenates them, so no row is duplicated or lost."""
    idx = np.array_split(np.arange(len(ds)), info.world_size)[info.rank]
    loader = DataLoader(Subset(ds, idx.tolist()), batch_size=cfg.batch_size_val or cfg.batch_size, shuffle=False,
                        num_workers=n_workers(cfg, info), pin_memory=info.device.type == "cuda")
    model.eval()
    parts, loss_sum, n = [], 0.0, 0
    for batch in tqdm(loader, desc="validation", disable=not info.is_main, leave=False):
        batch = to_device(batch, info.device)
        with autocast():
            out = model(batch)
        parts.append(out["logits"].float().cpu().numpy())
        if "loss" in out:
            loss_sum += float(out["loss"]) * len(out["logits"])
            n += len(out["logits"])
    local = np.concatenate(parts) if parts else np.zeros((0, len(LOGIT_COLS)), np.float32)
    gathered = dist_utils.gather_objects((local, loss_sum, n), info)
    logits = np.concatenate([g[0] for g in gathered])
    total_n = sum(g[2] for g in gathered)
    return logits, (sum(g[1] for g in gathered) / total_n if total_n else None)


def oracle_kl(val_df, cfg, log):
    """KL of the latent probabilities (synthetic data only; None on real data or if unusable)."""
    try:
        return metric.oracle_kl(val_df, cfg.data_dir)
    except (metric.MetricError, DataError) as err:
        log(f"warning: no oracle KL: {err}")
        return None


def write_val_logits(path, val_df, logits) -> None:
    df = pd.DataFrame(logits, columns=LOGIT_COLS)
    df.insert(0, "label_id", val_df["label_id"].to_numpy())
    df.insert(0, "eeg_id", val_df["eeg_id"].to_numpy())
    atomic_write_csv(path, df)


def plot_curve(path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ev = [h for h in history if h["val_kl"] is not None]
    if ev:
        ax.plot([h["epoch"] + 1 for h in ev], [h["val_loss"] for h in ev], "s-", label="val loss")
        ax.plot([h["epoch"] + 1 for h in ev], [h["val_kl"] for h in ev], "^-", label="val KL")
        ax.axhline(ev[-1]["prior_kl"], ls="--", c="grey", label="class-prior KL")
        if ev[-1]["oracle_kl"] is not None:
            ax.axhline(ev[-1]["oracle_kl"], ls=":", c="green", label="oracle KL")
    ax.set_xlabel("epoch")
    ax.set_ylabel("KL / loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


# --- run folder -----------------------------------------------------------------------------------
def choose_seed(cfg, opts, info) -> None:
    """cfg.seed < 0: --resume picks the single interrupted run of this config/fold, else a random seed."""
    if cfg.seed >= 0:
        return
    if opts["resume"]:
        found = ckpt.interrupted_runs(cfg.output_dir, cfg.name, cfg.fold)
        if len(found) != 1:
            raise ConfigError(f"--resume without --seed needs exactly one interrupted run under "
                              f"{Path(cfg.output_dir) / cfg.name / f'fold{cfg.fold}'}; found "
                              f"{[p.name for p in found] or 'none'}")
        cfg.seed = int(found[0].name[4:])
    else:
        cfg.seed = dist_utils.broadcast_object(draw_seed(), info)


def prepare_run_dir(cfg, opts, info) -> Path:
    out = ckpt.run_dir(cfg.output_dir, cfg.name, cfg.fold, cfg.seed)
    if opts["resume"]:
        if not ckpt.is_interrupted(out):
            raise ConfigError(f"{out}: nothing to resume ({'run already finished' if ckpt.is_finished(out) else 'no ' + ckpt.RESUME})")
        return out
    if (ckpt.is_finished(out) or ckpt.is_interrupted(out)) and not opts["force"]:
        what = "a finished run" if ckpt.is_finished(out) else "an interrupted run (continue it with --resume)"
        raise ConfigError(f"{out} holds {what}; use another --seed, or --force to train it again")
    dist_utils.barrier(info)
    if info.is_main and out.exists():
        for name in (ckpt.FINAL, ckpt.RESUME):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "neptune", ignore_errors=True)
    dist_utils.barrier(info)
    return out


def write_json(path: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=1, default=str)
    atomic_write_text(path, text)


def warn_config_changes(cfg, out: Path, log) -> None:
    saved = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    now = json.loads(json.dumps(cfg_to_dict(cfg), default=str))
    changed = [k for k in now if k not in ("curr_epoch",) and k in saved and saved[k] != now[k]]
    if changed:
        log(f"warning: resuming with changed config field(s) {', '.join(changed)}; results may differ")


# --- the run --------------------------------------------------------------------------------------
def run(cfg, opts, info) -> Path:
    log = print if info.is_main else (lambda *a, **k: None)
    train_df, val_df = read_rows(cfg)
    if steps_per_epoch(len(train_df), cfg, info) == 0:
        raise ConfigError(f"bad value for --batch_size: {cfg.batch_size} x {info.world_size} process(es) is more "
                          f"than the {len(train_df)} training rows")
    choose_seed(cfg, opts, info)
    out = prepare_run_dir(cfg, opts, info)
    if opts["resume"]:
        warn_config_changes(cfg, out, log)
    elif info.is_main:
        write_json(out / "config.json", cfg_to_dict(cfg))
        write_json(out / "run_info.json", {"world_size": info.world_size, "device": str(info.device),
                                           "train_rows": len(train_df), "val_rows": len(val_df),
                                           "torch": torch.__version__})

    seed_everything(cfg.seed + info.rank)
    generator = torch.Generator().manual_seed(cfg.seed + info.rank)
    model = build_model(cfg).to(info.device)
    n_steps = steps_per_epoch(len(train_df), cfg, info)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.epochs * n_steps)
    use_scaler = info.device.type == "cuda" and cfg.mixed_precision
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    autocast = autocast_for(cfg, info.device)

    start_epoch, step, history = 0, 0, []
    state = None
    if opts["resume"]:
        state = ckpt.load(out / ckpt.RESUME)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        for p, g in zip(model.parameters(), state["grads"]):  # accumulation pending across the epoch end
            p.grad = None if g is None else g.to(p.device)
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        log(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")

    net = model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if state is not None:
        rng = state["rng"]
        if len(rng) != info.world_size:
            log(f"warning: checkpoint has RNG states of {len(rng)} process(es), now {info.world_size}; "
                f"the continuation will not match an uninterrupted run")
        set_rng_state(rng[info.rank % len(rng)], generator)

    tracker = Tracker(cfg, out, enabled=info.is_main, resume_history=history, log=log)
    val_ds = build_dataset(val_df, cfg, mode="val")
    val_target = vote_shares(val_df)
    prior_kl = metric.prior_kl(vote_shares(train_df), val_target)
    oracle = oracle_kl(val_df, cfg, log)
    log(f"{cfg.name} fold {cfg.fold} seed {cfg.seed}: {len(train_df)} train / {len(val_df)} val rows, "
        f"{cfg.epochs} epochs x {n_steps} steps, device {info.device} x {info.world_size}, "
        f"amp {'fp16' if use_scaler else 'bf16' if autocast is not contextlib.nullcontext else 'off'} -> {out}")

    loader = None
    stop_after = opts["stop_after_epochs"]
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if loader is None or cfg.reload_train_loader:
                loader = train_loader(cfg, train_df, info, generator, epoch)
            elif isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            net.train()
            losses = []
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main, mininterval=1.0)
            for batch in bar:
                step += 1
                with autocast():
                    output = net(to_device(batch, info.device))
                loss = output["loss"]
                losses.append(float(loss.detach()))
                scaler.scale(loss / cfg.grad_accumulation).backward()
                if step % cfg.grad_accumulation == 0:
                    if cfg.clip_grad and cfg.clip_grad > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # stepping before the first optimizer step is intended
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                lr = optimizer.param_groups[0]["lr"]
                tracker.log_step(step, losses[-1], lr)
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", lr=f"{lr:.2e}", refresh=False)
            parts = dist_utils.gather_objects((sum(losses), len(losses)), info)
            row = {"epoch": epoch, "step": step, "train_loss": sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1),
                   "lr": optimizer.param_groups[0]["lr"]}
            if (epoch + 1) % cfg.eval_epochs == 0 or epoch + 1 == cfg.epochs:
                dist_utils.sync_buffers(model, info)
                logits, val_loss = predict(model, val_ds, cfg, info, autocast)
                row.update(val_loss=val_loss, val_kl=metric.kl_from_logits(val_target, logits),
                           prior_kl=prior_kl, oracle_kl=oracle)
                if info.is_main and epoch + 1 == cfg.epochs:  # only finished runs hold logits (blending reads them)
                    write_val_logits(out / "val_logits.csv", val_df, logits)
                vl = "n/a" if val_loss is None else f"{val_loss:.4f}"
                log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {vl}, "
                    f"val KL {row['val_kl']:.4f} (class prior {prior_kl:.4f}"
                    + ("" if oracle is None else f", oracle {oracle:.4f}") + ")")
            tracker.log_epoch(row)
            last = epoch + 1 == cfg.epochs
            rngs = dist_utils.gather_objects(get_rng_state(generator), info) if not last else None
            if info.is_main and not last:
                ckpt.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                           "grads": [None if p.grad is None else p.grad.detach().cpu() for p in model.parameters()],
                           "epoch": epoch, "step": step, "history": tracker.history, "rng": rngs,
                           "seed": cfg.seed}, out / ckpt.RESUME)
            dist_utils.barrier(info)
            if stop_after is not None and epoch + 1 >= stop_after and not last:
                log(f"stopped after epoch {epoch + 1} (--stop_after_epochs); continue with --resume --seed {cfg.seed}")
                return out
        if info.is_main:
            plot_curve(out / "learning_curve.png", tracker.history, f"{cfg.name} fold {cfg.fold} seed {cfg.seed}")
            final = tracker.history[-1]
            ckpt.save({"model": model.state_dict(), "name": cfg.name, "fold": cfg.fold, "seed": cfg.seed,
                       "epoch": cfg.epochs - 1, "val_kl": final["val_kl"]}, out / ckpt.FINAL)
            (out / ckpt.RESUME).unlink(missing_ok=True)
            log(f"done: {out} (val KL {final['val_kl']:.4f})")
    finally:
        tracker.close()
    return out


def main(argv=None) -> None:
    cfg, opts = parse_args(sys.argv[1:] if argv is None else list(argv))
    info = dist_utils.setup()
    try:
        run(cfg, opts, info)
    finally:
        dist_utils.cleanup()


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Train one config on one fold with one seed (docs/solution.md §§7-8).

    python train.py -C cfg_5a --fold 0 [--seed 7] [--any_config_field value ...] [--resume] [--force]
    torchrun --nproc_per_node 4 train.py -C cfg_5a --fold 0      # one run on 4 GPUs (DDP)
    --resume: continue an interrupted run; --force: retrain a finished one;
    --stop_after_epochs N / --stop_after_steps N: stop (resumably) after epoch N / after N batches in all

Loop as in the reference (Henkel-style): Adam, cosine decay to 0 without warm-up over
epochs * (train rows // batch_size) scheduler steps; the scheduler steps after *every* batch while
the optimiser steps every `grad_accumulation` batches (a global batch counter, so accumulation
carries over epoch ends as in the reference); gradients clipped to `clip_grad` after unscaling.
Precision is one code path on every device (engine/precision.py): `amp_dtype` float16 (+ GradScaler,
the reference's choice where `mixed_precision`), bfloat16 or float32. Speed without changing the
numbers: cuDNN autotuning, fused Adam (CUDA and CPU), persistent prefetching workers, no host sync per step,
DDP no_sync on accumulation micro-steps; opt-in `channels_last` and `compile`. Outputs go to <output_dir>/<name>/fold<fold>/seed<seed>/: config.json (resolved config),
run_info.json, metrics.csv (per epoch), last_state.pth (resume state, removed at the end), and at the
end val_logits.csv (eeg_id, label_id, raw logits), learning_curve.png and checkpoint.pth, written last
and fsynced: utils/checkpoint.py's rule makes a folder with a complete checkpoint.pth a finished run,
and only finished runs are blended or predicted with. `--force` trains into a hidden .seed<seed>.force/
beside the old run and replaces it only when the new run finishes. One process trains a run: rank 0
claims it first (utils/claim.py), and a second train.py on it stops in one line (exit 2). A run that
fails before it saved a resume state leaves no folder behind. Stopping (utils/stop.py): on SIGTERM,
SIGUSR1 (SLURM's warning before the time limit) or Ctrl-C the current step is finished and a resume state
that holds the position inside the epoch is saved (exit 128 + signal); --resume continues from that batch
as if never stopped (under DDP the ranks agree on stopping at the next loss read, every log_every steps). Seeds: see utils/seed.py (augmentations depend only on seed,
epoch and row). DDP: per-process batch = batch_size; validation in fixed batches of batch_size_val,
whole batches per rank, gathered in row order (engine/loaders.val_rows); only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.signal import LABEL_COLS, LOGIT_COLS  # noqa: E402
from data.synthetic import oracle_kl as synthetic_oracle_kl  # noqa: E402
from engine import step as opt_step  # noqa: E402
from engine.build import batch_hook, build_dataset, build_model, maybe_compile  # noqa: E402
from engine.cpu_cost import cpu_warning  # noqa: E402
from data.rows import read_rows  # noqa: E402
from engine.evaluate import predict_logits  # noqa: E402
from engine.loaders import make_train_loader, make_val_loader  # noqa: E402
from engine.precision import autocast_ctx, make_scaler, resolve_amp_dtype, setup_backend  # noqa: E402
from engine.step import to_device  # noqa: E402
from engine.tracking import Tracker  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils import claim as claims  # noqa: E402
from utils import distributed as dist_utils  # noqa: E402
from utils import metric  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.config import ConfigError, apply_overrides, cfg_to_dict, load_config  # noqa: E402
from utils.io import DataError, atomic_write, atomic_write_csv, atomic_write_text, run_cli  # noqa: E402
from utils.seed import draw_seed, get_rng_state, rank_seed, seed_everything, set_rng_state  # noqa: E402
from utils.stop import Stop, signal_name  # noqa: E402

USAGE = __doc__.split("\n\n")[1]


# --- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str]):
    """-C/--config NAME, --resume, --force, --stop_after_epochs N (stop resumably, e.g. to split a long
    run); everything else is a config override (`--field value`, `--field=value`, `--data-dir` too)."""
    p = ArgumentParser(prog="train.py", usage=USAGE)
    p.add_argument("-C", "--config")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--stop-after-epochs", default=None)
    p.add_argument("--stop-after-steps", default=None)
    opts, rest = p.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]  # `train.py -C cfg -- --lr 1e-3` reads as without the --
    if not opts.config:
        raise ConfigError("no config given: use -C cfg_name (e.g. -C cfg_5a)")
    for key in ("stop_after_epochs", "stop_after_steps"):
        value = getattr(opts, key)
        if value is not None:
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"bad value for --{key}: '{value}' (an integer >= 1)")
            setattr(opts, key, int(value))
    cfg = apply_overrides(load_config(opts.config), rest)
    check_cfg(cfg)
    return cfg, vars(opts)


def check_cfg(cfg) -> None:
    for key, low in (("epochs", 1), ("batch_size", 1), ("grad_accumulation", 1), ("eval_epochs", 1),
                     ("fold", -1), ("num_workers", 0)):
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"bad value for --{key}: {value!r} (an integer >= {low})")
    if not isinstance(cfg.seed, int) or cfg.seed >= 2**32:  # one SeedSequence word (utils/seed.py); -1: draw one
        raise ConfigError(f"bad value for --seed: {cfg.seed!r} (an integer below 2**32, or -1 for a random seed)")
    if cfg.optimizer != "Adam":
        raise ConfigError(f"bad value for --optimizer: {cfg.optimizer!r} (only Adam is implemented)")
    if cfg.schedule != "cosine":
        raise ConfigError(f"bad value for --schedule: {cfg.schedule!r} (only cosine is implemented)")


# --- data -----------------------------------------------------------------------------------------
def vote_shares(df: pd.DataFrame) -> np.ndarray:
    return metric.votes_to_target(df[LABEL_COLS].to_numpy())


def check_steps(cfg, n_steps: int) -> None:
    """A run whose batches never fill one accumulation would end with its initial weights, marked finished."""
    total = cfg.epochs * n_steps
    if total < cfg.grad_accumulation:
        raise ConfigError(f"bad value for --grad_accumulation: {cfg.grad_accumulation} batches per optimiser step, but "
                          f"the run has only {total} batch(es) ({cfg.epochs} epoch(s) x {n_steps}), so the optimiser "
                          f"would never step; lower --grad_accumulation or --batch_size, or raise --epochs")


def steps_per_epoch(n_rows: int, cfg, info) -> int:
    per_rank = math.ceil(n_rows / info.world_size) if info.distributed else n_rows
    return per_rank // cfg.batch_size


# --- validation -----------------------------------------------------------------------------------
def oracle_kl(val_df, cfg, log):
    """KL of the latent probabilities (synthetic data only; None on real data or if unusable)."""
    try:
        return synthetic_oracle_kl(val_df, cfg.data_dir)
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


def claim_run(final: Path, info, log) -> None:
    """Rank 0 claims the run (utils/checkpoint.claim_to_train: one process per run; a finished --force run
    left in staging is promoted, stale temporary files removed); every rank learns whether it could.
    Released when train() ends."""
    held = None
    if info.is_main:
        held = ckpt.claim_to_train(final, say=log)
    held = dist_utils.broadcast_object(held, info)
    if held:
        raise ConfigError(held)


def prepare_run_dir(cfg, opts, info, log) -> tuple[Path, Path]:
    """(work folder, final folder). A fresh run trains in its final folder; --force over an existing run
    trains in the hidden staging folder beside it, which replaces the old run only when it finishes."""
    final = ckpt.run_dir(cfg.output_dir, cfg.name, cfg.fold, cfg.seed)
    claim_run(final, info, log)
    state, staging = ckpt.run_state(final), ckpt.staging_dir(final)
    problem = ckpt.checkpoint_problem(final / ckpt.CHECKPOINT_FILE)
    if opts["force"] and state != ckpt.NOT_STARTED:
        if opts["resume"]:
            if not ckpt.is_interrupted(staging):
                raise ConfigError(f"{staging}: no interrupted --force run to resume")
            return staging, final
        dist_utils.barrier(info)
        if info.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            log(f"--force: training into {staging}; the {state} run in {final} stays until the new one finishes")
        dist_utils.barrier(info)
        return staging, final
    if opts["resume"]:
        if state != ckpt.INTERRUPTED:
            why = ("run already finished" if state == ckpt.FINISHED else
                   f"no {ckpt.RESUME_FILE}" + ("" if problem == "missing" else f", and {ckpt.CHECKPOINT_FILE} is a {problem}"))
            hint = " (an interrupted --force retrain: add --force)" if ckpt.is_interrupted(staging) else ""
            raise ConfigError(f"{final}: nothing to resume ({why}){hint}")
        return final, final
    if state != ckpt.NOT_STARTED:
        what = "a finished run" if state == ckpt.FINISHED else "an interrupted run (continue it with --resume)"
        raise ConfigError(f"{final} holds {what}; use another --seed, or --force to train it again")
    if final.exists():  # leftovers of an unfinished attempt (a cut-off checkpoint, stale logits): start clean
        dist_utils.barrier(info)
        if info.is_main:
            if problem != "missing":
                log(f"warning: {final / ckpt.CHECKPOINT_FILE} is a {problem}: not a finished run; training it again")
            shutil.rmtree(final, ignore_errors=True)
        dist_utils.barrier(info)
    return final, final


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
class Training(SimpleNamespace):
    """Everything one training run holds: config, process info, folders, rows, model, optimiser, loaders."""


def build(cfg, opts, info, log, stop: Stop | None = None) -> Training:
    """Rows, seed, run folder, model, optimiser, schedule and precision of a new or resumed run; `stop`: the
    process's stop request (utils/stop.py; none installed: only --stop_after_steps stops inside an epoch)."""
    train_df, val_df = read_rows(cfg)
    if info.device.type == "cpu" and (note := cpu_warning(cfg, len(train_df))):
        log(note)  # a GPU-sized config on a CPU: how much memory and time, and how to make it small
    n_steps = steps_per_epoch(len(train_df), cfg, info)
    if n_steps == 0:
        raise ConfigError(f"bad value for --batch_size: {cfg.batch_size} x {info.world_size} process(es) is more "
                          f"than the {len(train_df)} training rows")
    check_steps(cfg, n_steps)
    choose_seed(cfg, opts, info)
    work, final = prepare_run_dir(cfg, opts, info, log)
    run = Training(cfg=cfg, info=info, log=log, work=work, final=final, created=not work.exists(),
                   train_df=train_df, val_df=val_df, n_steps=n_steps, start_epoch=0, step=0, history=[], loader=None,
                   val_loader=None, skip=0, carried_loss=0.0, stop=stop or Stop(info.is_main),
                   stop_after_steps=opts.get("stop_after_steps"))
    seed_everything(rank_seed(cfg.seed, info.rank))
    run.amp = resolve_amp_dtype(cfg, info.device)
    setup_backend(info.device, run.amp)
    run.model = maybe_compile(build_model(cfg).to(info.device), cfg)
    run.prepare_batch = batch_hook(cfg)  # e.g. ds_2's curriculum weights for the epoch, set on the device
    run.optimizer = opt_step.make_optimizer(run.model.parameters(), cfg, info.device)
    run.scheduler = opt_step.cosine_schedule(run.optimizer, cfg.epochs * n_steps)
    run.scaler = make_scaler(run.amp, info.device)
    run.autocast = autocast_ctx(run.amp, info.device)
    return run


def restore(run: Training) -> None:
    """Continue an interrupted run: weights, optimiser, schedule, scaler, pending gradients, RNG states.
    A change of device or precision works, and is named in one line (the continuation then differs)."""
    out, log, info = run.work, run.log, run.info
    warn_config_changes(run.cfg, out, log)
    state = ckpt.load(out / ckpt.RESUME_FILE)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    saved_dev, saved_amp = state.get("device", info.device.type), state.get("amp", run.amp)
    if run.scaler.is_enabled() and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    changed = [f"{what} {now} (was {was})" for what, now, was in
               (("device", info.device.type, saved_dev), ("precision", run.amp, saved_amp)) if now != was]
    if changed:
        log(f"warning: resuming with {', '.join(changed)}: the run goes on, but will not equal an uninterrupted one"
            + ("; fp16 loss scaling starts afresh" if run.scaler.is_enabled() and not state["scaler"] else ""))
    opt_step.restore_pending_grads(run.model.parameters(), saved_pending_grads(state), info.rank, info.world_size,
                                   run.scaler)  # accumulation pending across the epoch end
    if "grads_per_rank" not in state and len(state["rng"]) > 1:
        log("warning: this resume state holds rank 0's pending gradients only (written by an older version): "
            "every rank continues from them, so the run will not equal an uninterrupted one")
    run.start_epoch, run.step, run.history = state["epoch"] + 1, state["step"], state["history"]
    restore_position(run, state)
    rng = state["rng"]
    if len(rng) != info.world_size:
        log(f"warning: resuming a run of {len(rng)} process(es) with {info.world_size}: its pending gradients are "
            f"averaged and its random streams reassigned, so the continuation will not match an uninterrupted run")
    set_rng_state(rng[info.rank % len(rng)], warn=lambda note: log(f"warning: {note}"))
    where = f"in epoch {run.start_epoch + 1} after batch {run.skip}/{run.n_steps}" if run.skip else \
        f"after epoch {run.start_epoch}/{run.cfg.epochs}"
    log(f"resuming {out} {where}")


def restore_position(run: Training, state: dict) -> None:
    """Where inside its epoch a stopped run was (batches this process trained, their summed loss). The
    batches are this process's share of the epoch's order, so the same number of processes must go on."""
    run.skip = state.get("batch", 0)
    if not run.skip:
        return
    losses, where = state["epoch_loss"], f"{run.work / ckpt.RESUME_FILE}: stopped inside epoch {run.start_epoch + 1}"
    if len(losses) != run.info.world_size:
        raise ConfigError(f"{where} with {len(losses)} process(es); resume it with {len(losses)} (its batches were "
                          f"split that way)")
    if state["batch_size"] != run.cfg.batch_size:
        raise ConfigError(f"{where} at --batch_size {state['batch_size']}; resume it with that batch size (its "
                          f"place is counted in batches)")
    run.carried_loss = losses[run.info.rank]


def train_epoch(run: Training, net, epoch: int) -> dict | None:
    """One pass over the training rows (from batch `run.skip` on, when resumed inside the epoch); the
    scheduler steps every batch, the optimiser every grad_accumulation batches (a global counter, so
    accumulation carries over epoch ends). The loss is summed on the device and read (a host sync) only
    every `log_every` steps and at the epoch's end; DDP all-reduces gradients only on the micro-step that
    steps the optimiser. None when a stop request ends the epoch early (`run.skip` batches done)."""
    cfg, info = run.cfg, run.info
    if run.loader is None or cfg.reload_train_loader:
        run.loader = make_train_loader(cfg, run.train_df, info, epoch)
    skip, run.skip = run.skip, 0
    run.loader.sampler.set_epoch(epoch, skip * cfg.batch_size)
    net.train()
    total = torch.tensor(run.carried_loss, dtype=torch.float32, device=info.device)
    run.carried_loss = 0.0
    window, n, shown = torch.zeros((), device=info.device), skip, skip
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main, mininterval=1.0,
               initial=skip, total=run.n_steps)
    for batch in bar:
        run.step += 1
        stepping = run.step % cfg.grad_accumulation == 0
        sync = contextlib.nullcontext() if stepping or not info.distributed else net.no_sync()
        batch = to_device(batch, info.device)
        batch = run.prepare_batch(batch, cfg, epoch)
        with sync:
            with run.autocast():
                loss = net(batch)["loss"]
            opt_step.backward(loss, run.scaler, cfg.grad_accumulation)
        total += loss.detach().float()
        window += loss.detach().float()
        n += 1
        if stepping:
            opt_step.optimizer_step(run.model.parameters(), run.optimizer, run.scaler, cfg.clip_grad)
        with warnings.catch_warnings():  # stepping before the first optimizer step is intended
            warnings.simplefilter("ignore", UserWarning)
            run.scheduler.step()
        read = n - shown >= cfg.log_every or n == run.n_steps
        if read:
            mean = float(window) / (n - shown)  # the only host sync in the loop
            lr = run.optimizer.param_groups[0]["lr"]
            run.tracker.log_step(run.step, mean, lr)
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", refresh=False)
            window.zero_()
            shown = n
        if n < run.n_steps and stop_here(run, read):
            run.skip, run.carried_loss = n, float(total)
            return None
    parts = dist_utils.gather_objects((float(total), n), info)
    return {"epoch": epoch, "step": run.step, "train_loss": sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1),
            "lr": run.optimizer.param_groups[0]["lr"]}


def stop_here(run: Training, read: bool) -> bool:
    """Stop after this step? --stop_after_steps, or a stop signal: at once in one process; under DDP every
    rank must stop at the same step, so they agree at loss reads (a sync that happens anyway)."""
    if run.stop_after_steps is not None and run.step >= run.stop_after_steps:
        return True
    if not run.info.distributed:
        return run.stop.requested
    return read and dist_utils.any_rank(run.stop.requested, run.info)


def validate(run: Training, row: dict, last: bool) -> None:
    """Validation KL into `row`; after the last epoch the logits are written (before the checkpoint)."""
    dist_utils.sync_buffers(run.model, run.info)
    if run.val_loader is None:
        run.val_loader = make_val_loader(run.val_ds, run.cfg, run.info)
    logits, val_loss = predict_logits(run.model, run.val_ds, run.cfg, run.info, run.autocast, run.val_loader)
    row.update(val_loss=val_loss, val_kl=metric.kl_from_logits(run.val_target, logits),
               prior_kl=run.prior_kl, oracle_kl=run.oracle)
    if run.info.is_main and last:
        write_val_logits(run.work / "val_logits.csv", run.val_df, logits)
    vl = "n/a" if val_loss is None else f"{val_loss:.4f}"
    run.log(f"epoch {row['epoch'] + 1}/{run.cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {vl}, "
          f"val KL {row['val_kl']:.4f} (class prior {run.prior_kl:.4f}"
          + ("" if run.oracle is None else f", oracle {run.oracle:.4f}") + ")")


def saved_pending_grads(state: dict) -> list:
    """Per process, the unscaled pending gradients of a resume state. States written before they were saved
    per process hold rank 0's list only, multiplied by the fp16 loss scale of the time."""
    if "grads_per_rank" in state:
        return state["grads_per_rank"]
    scale = state["scaler"]["scale"] if state.get("scaler") else 1.0
    return [[None if g is None else g / scale for g in state["grads"]]]


def save_resume_state(run: Training, epoch: int) -> None:
    """Everything an uninterrupted run would carry on with after epoch `epoch` (and `run.skip` batches of
    the next), from every process: the pending gradients (unscaled), the random states and the epoch's
    partial loss sum of each rank, the rest from rank 0 (identical on all)."""
    rngs = dist_utils.gather_objects(get_rng_state(), run.info)
    losses = dist_utils.gather_objects(run.carried_loss, run.info)
    grads = dist_utils.gather_to_main(opt_step.pending_grads(run.model.parameters(), run.scaler), run.info)
    if run.info.is_main:
        ckpt.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                   "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "grads_per_rank": grads,
                   "epoch": epoch, "batch": run.skip, "batch_size": run.cfg.batch_size, "epoch_loss": losses,
                   "step": run.step,
                   "history": run.tracker.history, "rng": rngs, "seed": run.cfg.seed, "device": run.info.device.type,
                   "amp": run.amp}, run.work / ckpt.RESUME_FILE)


def finish(run: Training) -> None:
    """Curve, then the checkpoint (fsynced, last), then a --force run replaces the old one."""
    cfg = run.cfg
    plot_curve(run.work / "learning_curve.png", run.tracker.history, f"{cfg.name} fold {cfg.fold} seed {cfg.seed}")
    final = run.tracker.history[-1]
    run.tracker.finish([run.work / "learning_curve.png", run.work / "config.json", run.work / "val_logits.csv"])
    ckpt.save({"model": run.model.state_dict(), "name": cfg.name, "fold": cfg.fold, "seed": cfg.seed,
               "epoch": cfg.epochs - 1, "val_kl": final["val_kl"]}, run.work / ckpt.CHECKPOINT_FILE)
    (run.work / ckpt.RESUME_FILE).unlink(missing_ok=True)
    if run.work != run.final:
        ckpt.promote(run.work, run.final)
    run.log(f"done: {run.final} (val KL {final['val_kl']:.4f})")


def train_epochs(run: Training, opts) -> None:
    cfg, info, log = run.cfg, run.info, run.log
    net = run.model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if info.is_main and not opts["resume"]:
        write_json(run.work / "config.json", cfg_to_dict(cfg))
        write_json(run.work / "run_info.json", {"world_size": info.world_size, "device": str(info.device),
                                              "train_rows": len(run.train_df), "val_rows": len(run.val_df),
                                              "torch": torch.__version__})
    run.tracker = Tracker(cfg, run.work, enabled=info.is_main, resume_history=run.history, log=log,
                          tags={"world_size": info.world_size, "device": info.device.type, "precision": run.amp})
    run.val_ds = build_dataset(run.val_df, cfg, mode="val")
    run.val_target = vote_shares(run.val_df)
    run.prior_kl = metric.prior_kl(vote_shares(run.train_df), run.val_target)
    run.oracle = oracle_kl(run.val_df, cfg, log)
    stop_after = opts["stop_after_epochs"]
    try:
        with run.stop.armed():
            log(f"{cfg.name} fold {cfg.fold} seed {cfg.seed}: {len(run.train_df)} train / {len(run.val_df)} val rows, "
                f"{cfg.epochs} epochs x {run.n_steps} steps, device {info.device} x {info.world_size}, "
                f"amp {run.amp}{', compiled' if cfg.compile else ''} -> {run.work}", flush=True)
            for epoch in range(run.start_epoch, cfg.epochs):
                last = epoch + 1 == cfg.epochs
                row = train_epoch(run, net, epoch)
                if row is None:  # stopped inside the epoch
                    save_resume_state(run, epoch - 1)
                    dist_utils.barrier(info)
                    return stopped(run, f"in epoch {epoch + 1} after batch {run.skip}/{run.n_steps}"
                                   + ("" if run.stop.requested else " (--stop_after_steps)"))
                if (epoch + 1) % cfg.eval_epochs == 0 or last:
                    validate(run, row, last)
                run.tracker.log_epoch(row)
                if last:
                    break
                save_resume_state(run, epoch)
                dist_utils.barrier(info)
                if stop_after is not None and epoch + 1 >= stop_after:
                    return stopped(run, f"after epoch {epoch + 1} (--stop_after_epochs)")
                if run.stop_after_steps is not None and run.step >= run.stop_after_steps:
                    return stopped(run, f"after epoch {epoch + 1} (--stop_after_steps)")
                if dist_utils.any_rank(run.stop.requested, info):
                    return stopped(run, f"after epoch {epoch + 1}")
            if info.is_main:
                finish(run)
            dist_utils.barrier(info)  # no rank tears the process group down while rank 0 still writes
    finally:
        run.tracker.close()


def stopped(run: Training, where: str) -> None:
    """A stop with its resume state saved: one line; a signal's exit status is 128 + its number."""
    cfg = run.cfg
    why = f"by {signal_name(run.stop.signum)} " if run.stop.requested else ""
    run.log(f"stopped {why}{where}; resume state {run.work / ckpt.RESUME_FILE}; continue with --resume "
            f"--seed {cfg.seed}" + (" --force" if run.work != run.final else ""))
    if run.stop.requested:
        raise SystemExit(run.stop.exit_status)


def train(cfg, opts, info) -> Path:
    """Build (or restore) and train one run; a run that fails before it saved a resume state leaves no folder."""
    log = print if info.is_main else (lambda *a, **k: None)
    # the run's claim (taken in prepare_run_dir) is released however train() ends; stop signals: utils/stop.py
    with Stop(announce=info.is_main).installed() as stop, claims.scope():
        run = build(cfg, opts, info, log, stop)  # writes nothing: the folder's first file comes in train_epochs
        try:
            if opts["resume"]:
                restore(run)
            train_epochs(run, opts)
        except BaseException:
            if (run.created and info.is_main and not (run.work / ckpt.RESUME_FILE).exists()
                    and not ckpt.is_finished(run.work)):
                shutil.rmtree(run.work, ignore_errors=True)
            raise
    return run.final


def main(argv=None) -> None:
    cfg, opts = parse_args(sys.argv[1:] if argv is None else list(argv))
    info = dist_utils.setup()
    try:
        train(cfg, opts, info)
    finally:
        dist_utils.cleanup()


if __name__ == "__main__":
    sys.exit(run_cli(main))

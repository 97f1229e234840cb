"""The blend of docs/solution.md §9: collect each config's out-of-fold logits, fit weights + class bias, score them.

Reused by scripts/blend_weights.py (fit and report), scripts/predict.py (read the weights) and the demo.
The fit is vectorised over the 5 KFold splits: one SGD step updates all 5 independent (w, c) pairs at
once, which gives the same numbers as 5 separate fits (plain SGD, per-split losses summed) in a
fraction of the time.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from configs.ensemble import BLEND_FILE, BLEND_FOLDS
from configs.ensemble import CONFIGS as ALL_CONFIGS
from data.signal import LABEL_COLS, LOGIT_COLS
from utils import checkpoint as ckpt
from data.synthetic import oracle_kl
from engine import tracking
from utils.io import DataError, atomic_write_text, read_csv_checked
from utils.metric import kl_divergence, kl_from_logits, prior_kl, softmax, votes_to_target

GOLDEN_FILE = "train_folded_6k6.csv"


def unfinished_with_logits(output_dir, config: str, folds) -> list[Path]:
    """Run folders whose val_logits.csv is not backed by a complete checkpoint (named, never blended)."""
    base = Path(output_dir) / config
    return sorted(p.parent for f in folds for p in base.glob(f"fold{f}/seed*/val_logits.csv")
                  if not ckpt.is_finished(p.parent))


def read_val_logits(path: Path) -> pd.DataFrame:
    df = read_csv_checked(path, required=["label_id", *LOGIT_COLS], what="validation logits")
    if df["label_id"].duplicated().any():
        raise DataError(f"{path}: duplicated label_id rows")
    return df[["label_id", *LOGIT_COLS]]


def config_oof(output_dir, config: str, folds=BLEND_FOLDS, first_seed_only: bool = False):
    """One config's out-of-fold logits (label_id + LOGIT_COLS), seeds averaged per fold.

    Returns (frame or None, list of missing folds, number of seed runs used)."""
    parts, missing, n_runs = [], [], 0
    for fold in folds:
        dirs = ckpt.finished_runs(output_dir, config, fold)  # only finished runs' logits count
        if first_seed_only:
            dirs = dirs[:1]
        if not dirs:
            missing.append(fold)
            continue
        runs = [read_val_logits(d / "val_logits.csv") for d in dirs]
        n_runs += len(runs)
        # average over the seeds that hold a row (the seeds normally cover the same rows)
        parts.append(pd.concat(runs).groupby("label_id", sort=False)[LOGIT_COLS].mean().reset_index())
    if not parts:
        return None, missing, 0
    oof = pd.concat(parts, ignore_index=True)
    dup = oof["label_id"][oof["label_id"].duplicated()]
    if len(dup):  # a row validated in two folds: its patient leaked across folds
        raise DataError(f"{Path(output_dir) / config}: {dup.nunique()} validation row(s) appear in more than one fold "
                        f"(e.g. label_id {dup.iloc[0]}); the folds overlap, so the out-of-fold logits are not "
                        f"out of fold (remake the folds and retrain)")
    return oof, missing, n_runs


@dataclass
class OOFStack:
    """The aligned blend inputs: X (N, 6, M) logits, y (N, 6) vote shares, and what was left out."""
    configs: list
    X: np.ndarray
    y: np.ndarray
    rows: pd.DataFrame  # the golden rows blended, in X's order
    notes: list = field(default_factory=list)
    n_runs: dict = field(default_factory=dict)

    @property
    def label_ids(self) -> np.ndarray:
        return self.rows["label_id"].to_numpy()


def load_oof_stack(output_dir, data_dir, configs=None, folds=BLEND_FOLDS, first_seed_only=False) -> OOFStack:
    """Stack the configs' OOF logits on the golden rows of `folds` (rows every used config covers)."""
    configs = list(configs or ALL_CONFIGS)
    golden_path = Path(data_dir) / GOLDEN_FILE
    golden = read_csv_checked(golden_path, required=["label_id", "eeg_id", "fold", *LABEL_COLS],
                              what="golden validation file")
    golden = golden[golden["fold"].isin(folds)].drop_duplicates("label_id").reset_index(drop=True)
    notes, frames, n_runs = [], {}, {}
    for cfg in configs:
        for d in unfinished_with_logits(output_dir, cfg, folds):
            problem = ckpt.checkpoint_problem(d / ckpt.CHECKPOINT_FILE)
            notes.append(f"{d}: val_logits.csv without a complete {ckpt.CHECKPOINT_FILE} ({problem}): unfinished, not used")
        oof, missing, runs = config_oof(output_dir, cfg, folds, first_seed_only)
        if oof is None:
            notes.append(f"{cfg}: no finished runs under {Path(output_dir) / cfg}/fold{{{','.join(map(str, folds))}}}/seed*: left out")
            continue
        if missing:
            notes.append(f"{cfg}: fold(s) {', '.join(map(str, missing))} missing: only rows of the other folds can be blended")
        unknown = ~oof["label_id"].isin(golden["label_id"])
        if unknown.any():
            notes.append(f"{cfg}: {int(unknown.sum())} logit row(s) are not golden rows of folds {list(folds)}: ignored")
        frames[cfg], n_runs[cfg] = oof.set_index("label_id"), runs
    if not frames:
        raise DataError(f"{output_dir}: no validation logits for any of {', '.join(configs)} "
                        f"(expected finished runs <output_dir>/<cfg>/fold<0-3>/seed*/ with checkpoint.pth and val_logits.csv; train first)")
    used = list(frames)
    keep = np.ones(len(golden), dtype=bool)
    for cfg in used:
        keep &= golden["label_id"].isin(frames[cfg].index).to_numpy()
    if keep.sum() < len(golden):
        notes.append(f"{int(keep.sum())} of {len(golden)} golden rows of folds {list(folds)} are covered by all of "
                     f"{', '.join(used)}: blending those")
    rows = golden[keep]
    if rows.empty:
        raise DataError(f"no golden row of {golden_path} is covered by all of {', '.join(used)}")
    X = np.stack([frames[cfg].loc[rows["label_id"], LOGIT_COLS].to_numpy(np.float64) for cfg in used], axis=2)
    y = votes_to_target(rows[LABEL_COLS].to_numpy())
    return OOFStack(used, X, y, rows.reset_index(drop=True), notes, n_runs)


def fit_blend(X: np.ndarray, y: np.ndarray, epochs: int = 801, lr: float = 0.1, batch_size: int = 1024,
              n_splits: int = 5, random_state: int = 1, step_every: int = 10, gamma: float = 0.95,
              seed: int = 0) -> dict:
    """Fit blend logits = sum_m w_m X[:, :, m] + c in KFold(n_splits, shuffle, random_state).

    Each split: w init 1/M, c init 0, SGD(lr), batches of `batch_size` drawn from a fresh shuffle each
    epoch with the last partial batch dropped, StepLR(step_every, gamma), KLDiv(batchmean) loss.
    When a split has fewer training rows than `batch_size`, the batch is all its rows (full-batch
    gradient descent), since dropping the only partial batch would leave nothing to fit.
    Returns mean w (M,), mean c (6,), the per-split w/c, and the held-out predictions of every row.
    """
    from sklearn.model_selection import KFold

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    n, k, m = X.shape
    if n < n_splits:
        raise DataError(f"blend needs at least {n_splits} rows for its {n_splits}-fold fit, got {n}")
    splits = list(KFold(n_splits=n_splits, shuffle=True, random_state=random_state).split(np.arange(n)))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    Xflat = Xt.reshape(n, k * m)
    w = torch.full((n_splits, m), 1.0 / m, requires_grad=True)
    c = torch.zeros((n_splits, k), requires_grad=True)
    opt = torch.optim.SGD([w, c], lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_every, gamma=gamma)
    train_idx = [torch.from_numpy(tr) for tr, _ in splits]
    bs = [min(batch_size, len(tr)) for tr in train_idx]
    n_batches = [len(tr) // b for tr, b in zip(train_idx, bs)]
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead (and stall on a busy CPU)
    try:
        for _ in range(epochs):
            perms = [tr[torch.randperm(len(tr), generator=gen)] for tr in train_idx]
            for step in range(max(n_batches)):
                opt.zero_grad(set_to_none=False)
                if len(set(bs)) == 1 and all(step < nb for nb in n_batches):
                    idx = torch.cat([p[step * bs[0]:(step + 1) * bs[0]] for p in perms])  # (S * B,)
                    xb = Xflat.index_select(0, idx).reshape(n_splits, bs[0] * k, m)
                    logits = torch.bmm(xb, w[:, :, None]).reshape(n_splits, bs[0], k) + c[:, None, :]
                    yb = yt.index_select(0, idx).reshape(n_splits, bs[0], k)
                    # KLDiv(batchmean) per split, summed: the gradients of separate fits
                    loss = F.kl_div(F.log_softmax(logits, dim=2), yb, reduction="sum") / bs[0]
                else:  # uneven splits: a split without a batch at this step has zero gradient (SGD: no move)
                    loss = 0.0
                    for s in range(n_splits):
                        if step < n_batches[s]:
                            idx = perms[s][step * bs[s]:(step + 1) * bs[s]]
                            logits = Xt[idx] @ w[s] + c[s]
                            loss = loss + F.kl_div(F.log_softmax(logits, dim=1), yt[idx], reduction="batchmean")
                loss.backward()
                opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    w_np, c_np = w.detach().numpy().astype(np.float64), c.detach().numpy().astype(np.float64)
    oof = np.zeros((n, k))
    for s, (_, va) in enumerate(splits):
        oof[va] = X[va].astype(np.float64) @ w_np[s] + c_np[s]
    return {"w": w_np.mean(0), "c": c_np.mean(0), "w_splits": w_np, "c_splits": c_np, "oof_logits": oof}


def blend_logits(X: np.ndarray, w, c) -> np.ndarray:
    """sum_m w_m X[:, :, m] + c for X (N, 6, M)."""
    return np.asarray(X, dtype=np.float64) @ np.asarray(w, dtype=np.float64) + np.asarray(c, dtype=np.float64)


def save_blend(path, configs, w, c, report: dict) -> Path:
    payload = {"configs": list(configs), "weights": {cfg: float(v) for cfg, v in zip(configs, w)},
               "bias": [float(v) for v in c], "label_cols": LABEL_COLS, **report}
    atomic_write_text(path, json.dumps(payload, indent=2))
    return Path(path)


def load_blend(path) -> dict:
    """Weights and bias saved by blend_weights.py, checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: blend file not found (run `python scripts/blend_weights.py` after training)")
    try:
        blend = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable blend file: {err}") from None
    weights, bias = blend.get("weights"), blend.get("bias")
    if not isinstance(weights, dict) or not weights:
        raise DataError(f"{path}: no 'weights' mapping config -> weight")
    if not isinstance(bias, list) or len(bias) != len(LABEL_COLS):
        raise DataError(f"{path}: 'bias' must be a list of {len(LABEL_COLS)} numbers")
    blend["weights"] = {k: float(v) for k, v in weights.items()}
    blend["bias"] = [float(v) for v in bias]
    return blend


def format_seed_readme(configs, w, c) -> str:
    """The two blocks the reference printed (seed README)."""
    body = json.dumps({cfg: round(float(v), 8) for cfg, v in zip(configs, w)}, indent=2)
    bias = "[" + ", ".join(f"{v: .6f}" for v in c) + "]"
    return f"# Model weights\n{body}\n# Class bias term for the {len(c)} classes\n{bias}"


def oof_report(stack: OOFStack, fit: dict) -> dict:
    """Per-config OOF KL, blended OOF KL (each KFold split's held-out predictions), class-prior KL."""
    per_cfg = {cfg: kl_from_logits(stack.y, stack.X[:, :, i]) for i, cfg in enumerate(stack.configs)}
    return {
        "oof_kl": per_cfg,
        "blend_oof_kl": kl_divergence(stack.y, softmax(fit["oof_logits"])),
        "blend_insample_kl": kl_from_logits(stack.y, blend_logits(stack.X, fit["w"], fit["c"])),
        "mean_logit_kl": kl_from_logits(stack.y, stack.X.mean(axis=2)),
        "prior_kl": prior_kl(stack.y, stack.y),  # the blended rows' own mean vote shares
        "n_rows": int(len(stack.y)),
    }


def plot_kl(report: dict, path: Path) -> Path:
    """Bar chart: each config's OOF KL and the blend, with the class-prior (and oracle) levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["oof_kl"]) + ["blend"]
    vals = list(report["oof_kl"].values()) + [report["blend_oof_kl"]]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 4.2))
    bars = ax.bar(names, vals, color=["#7a9cc6"] * (len(names) - 1) + ["#d9822b"])
    for bar, v in zip(bars, vals):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(report["prior_kl"], color="grey", ls="--", label=f"class prior {report['prior_kl']:.3f}")
    if report.get("oracle_kl") is not None:
        ax.axhline(report["oracle_kl"], color="green", ls=":", label=f"oracle (latent) {report['oracle_kl']:.3f}")
    ax.set_ylabel("OOF KL divergence (lower is better)")
    ax.set_title(f"Out-of-fold KL on {report['n_rows']} golden rows")
    ax.legend(loc="upper right", fontsize=8)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylim(0, max(vals + [report["prior_kl"]]) * 1.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def blend_runs(output_dir, data_dir, configs=None, folds=BLEND_FOLDS, first_seed_only=False, epochs=801, out=None,
               plot=True, log=print, tracker=None) -> dict:
    """The blend step of the pipeline: stack the OOF logits, fit, report each config's and the blend's OOF KL,
    save the weights (and a bar chart of the KLs beside them), and log them as a run named "blend" beside
    the training runs (tracker: "mlflow", "none"...; None: the trackers the blended runs used). Returns the report."""
    t0 = time.perf_counter()
    stack = load_oof_stack(output_dir, data_dir, configs, tuple(folds), first_seed_only)
    for note in stack.notes:
        log(f"note: {note}")
    log(f"blending {len(stack.configs)} config(s) on {len(stack.y)} rows "
        f"({', '.join(f'{c}: {n} run(s)' for c, n in stack.n_runs.items())})")
    t1 = time.perf_counter()
    fit = fit_blend(stack.X, stack.y, epochs=epochs)
    fit_s = time.perf_counter() - t1
    report = oof_report(stack, fit)
    report["oracle_kl"] = oracle_kl(stack.rows, data_dir)  # None on real data
    report.update(first_seed_only=first_seed_only, folds=list(folds), fit_seconds=round(fit_s, 2),
                  n_runs=stack.n_runs, notes=stack.notes)
    log(format_seed_readme(stack.configs, fit["w"], fit["c"]))
    log("# OOF KL per config")
    for cfg, kl in report["oof_kl"].items():
        log(f"{cfg:>8s}  {kl:.4f}")
    log(f"{'mean':>8s}  {report['mean_logit_kl']:.4f}  (plain mean of the logits)")
    log(f"{'blend':>8s}  {report['blend_oof_kl']:.4f}  (each row predicted by the KFold split that held it out)")
    log(f"{'prior':>8s}  {report['prior_kl']:.4f}  (class prior of these rows)")
    if report["oracle_kl"] is not None:
        log(f"{'oracle':>8s}  {report['oracle_kl']:.4f}  (synthetic latent probabilities)")
    out = Path(out) if out else Path(output_dir) / BLEND_FILE
    save_blend(out, stack.configs, fit["w"], fit["c"], report)
    log(f"saved {out}")
    png = plot_kl(report, out.with_name(out.stem + "_kl.png")) if plot else None
    if png:
        log(f"saved {png}")
    track_blend(tracker, output_dir, stack, fit, report, [out, png], epochs, log)
    log(f"blend fit {fit_s:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return report


def track_blend(tracker, output_dir, stack: OOFStack, fit: dict, report: dict, files, epochs: int, log=print) -> None:
    """The blend as its own tracked run: weights, bias, per-config and blended OOF KL, the saved files."""
    params = {"configs": ",".join(stack.configs), "folds": ",".join(map(str, report["folds"])), "epochs": epochs,
              "first_seed_only": report["first_seed_only"], "n_rows": report["n_rows"],
              **{f"n_runs/{cfg}": n for cfg, n in stack.n_runs.items()}}
    values = {**{f"weight/{cfg}": w for cfg, w in zip(stack.configs, fit["w"])},
              **{f"bias/{col}": c for col, c in zip(LABEL_COLS, fit["c"])},
              **{f"oof_kl/{cfg}": kl for cfg, kl in report["oof_kl"].items()},
              **{k: report[k] for k in ("blend_oof_kl", "blend_insample_kl", "mean_logit_kl", "prior_kl", "oracle_kl")}}
    with tracking.open_run(tracker, output_dir, "blend", "blend", params, configs=stack.configs, log=log) as run:
        run.metrics(values, step=0)
        run.files(files)

"""Fit the blend weights and class bias on the configs' out-of-fold logits (docs/solution.md §9) and save them.

    python scripts/blend_weights.py [--data-dir datamount] [--output-dir output] [--configs cfg_1 cfg_5a]
                                    [--first-seed-only] [--out output/blend_weights.json]

Reads <output_dir>/<cfg>/fold{0..3}/seed*/val_logits.csv, averages the seeds of each fold, aligns the
rows to the golden file by label_id, fits, prints each config's OOF KL, the blended OOF KL (every row
predicted by the KFold split that held it out) and the weights/bias in the seed README's format,
and writes the JSON that scripts/predict.py reads plus a bar chart of the KLs next to it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import blend  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import run_cli  # noqa: E402
from utils.metric import oracle_kl  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="datamount", help="folder with train_folded_6k6.csv (golden rows)")
    p.add_argument("--output-dir", default="output", help="training runs: <output_dir>/<cfg>/fold<f>/seed<s>/")
    p.add_argument("--configs", nargs="+", default=blend.ALL_CONFIGS, help="configs to blend (default: all nine)")
    p.add_argument("--folds", nargs="+", type=int, default=list(blend.BLEND_FOLDS))
    p.add_argument("--first-seed-only", action="store_true",
                   help="use only the lowest-numbered seed of each fold (the reference's choice) instead of the seed mean")
    p.add_argument("--epochs", type=int, default=801)
    p.add_argument("--out", default=None, help="JSON to write (default <output_dir>/blend_weights.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the KL bar chart")
    return p.parse_args(argv)


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    stack = blend.load_oof_stack(args.output_dir, args.data_dir, args.configs, tuple(args.folds), args.first_seed_only)
    for note in stack.notes:
        print(f"note: {note}")
    print(f"blending {len(stack.configs)} config(s) on {len(stack.y)} rows "
          f"({', '.join(f'{c}: {n} run(s)' for c, n in stack.n_runs.items())})")
    t1 = time.perf_counter()
    fit = blend.fit_blend(stack.X, stack.y, epochs=args.epochs)
    fit_s = time.perf_counter() - t1
    report = blend.oof_report(stack, fit)
    report["oracle_kl"] = oracle_kl(stack.rows, args.data_dir)  # None on real data
    report.update(first_seed_only=args.first_seed_only, folds=list(args.folds), fit_seconds=round(fit_s, 2),
                  n_runs=stack.n_runs, notes=stack.notes)
    print(blend.format_seed_readme(stack.configs, fit["w"], fit["c"]))
    print("# OOF KL per config")
    for cfg, kl in report["oof_kl"].items():
        print(f"{cfg:>8s}  {kl:.4f}")
    print(f"{'mean':>8s}  {report['mean_logit_kl']:.4f}  (plain mean of the logits)")
    print(f"{'blend':>8s}  {report['blend_oof_kl']:.4f}  (each row predicted by the KFold split that held it out)")
    print(f"{'prior':>8s}  {report['prior_kl']:.4f}  (class prior of these rows)")
    if report["oracle_kl"] is not None:
        print(f"{'oracle':>8s}  {report['oracle_kl']:.4f}  (synthetic latent probabilities)")
    out = Path(args.out) if args.out else Path(args.output_dir) / blend.BLEND_FILE
    blend.save_blend(out, stack.configs, fit["w"], fit["c"], report)
    print(f"saved {out}")
    if not args.no_plot:
        print(f"saved {plot_kl(report, out.with_name(out.stem + '_kl.png'))}")
    print(f"blend fit {fit_s:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))

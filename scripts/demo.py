"""The end-to-end demo on a CPU: synthetic data -> folds -> row selection -> 9 configs x 4 folds -> blend
-> submission, ending with a table of OOF KLs against the class prior and the oracle.

    python scripts/demo.py [--work-dir demo] [--configs cfg_1 ...] [--folds 0 1 2 3] [--workers 2]

The data is generated once into <work_dir>/datamount (reused when present with the same settings);
every demo run trains into a fresh <work_dir>/run_<time>/ so nothing is overwritten. Training uses
DEMO overrides that fit a small CPU (configs/demo.py, written to <run_dir>/demo_overrides.json and read
back as `./run_train.sh --overrides` reads it): the configs' own models, datasets, augmentations and
schedules, but a tiny timm backbone ('test_efficientnet', random init) for the 2D configs, coarser mel
images (16 mels, 8x larger hop; zoom 16x), a narrow mdl_2 (8 front-end filters, one Squeezeformer block
of width 16), at most 160 train rows (mdl_2: 128), 7 epochs (mdl_2: 5), batch 8, lr 3e-3, validation
after the last epoch only, two runs at a time with one thread each.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from configs.demo import DEMO_SEED, demo_fields  # noqa: E402
from configs.ensemble import BLEND_FILE, CONFIGS  # noqa: E402
from sweep import overrides, runs as sweep  # noqa: E402
from inference import blend  # noqa: E402
from inference.submission import predict_submission  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402
from utils.io import DataError, atomic_write_csv, run_cli  # noqa: E402
from utils.metric import score  # noqa: E402

OVERRIDES_FILE = "demo_overrides.json"  # in the run folder: the demo sizes as ./run_train.sh --overrides reads them
DATA_FILES = ("train.csv", "test.csv", "train_folded.csv", "train_folded_6k6.csv", "train_folded_6k6c.csv",
              "train_folded_6k6c_1up.csv")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default="demo", help="holds datamount/ (reused) and one run_<time>/ per demo")
    p.add_list("--configs", default=CONFIGS)
    p.add_list("--folds", type=int, default=[0, 1, 2, 3])
    p.add_argument("--n-patients", type=int, default=100, help="synthetic train patients")
    p.add_argument("--n-test", type=int, default=8, help="synthetic test recordings")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--epochs", type=int, default=7, help="epochs of the 2D configs (mdl_2: two fewer)")
    p.add_argument("--max-train-rows", type=int, default=160)
    p.add_argument("--workers", type=int, default=2, help="training processes at a time (one thread each)")
    p.add_argument("--blend-epochs", type=int, default=801)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further train.py overrides for every run (must come last)")
    return p.parse_args(argv)


def step(title: str):
    print(f"\n=== {title}", flush=True)


def run_script(*args: str) -> None:
    """A project script as a user would run it; its failure stops the demo with its own message."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    for ln in lines[-3:]:
        print(f"  {ln}")
    if proc.returncode != 0:
        raise DataError(f"{' '.join(args[:1])} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")


def make_data(data_dir: Path, args) -> None:
    """Generate, fold and filter once; reuse when the same settings made it."""
    stamp = data_dir / "demo_data.json"
    want = {"seed": args.seed, "n_patients": args.n_patients, "n_test": args.n_test}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all((data_dir / f).is_file() for f in DATA_FILES):
        print(f"  reusing {data_dir} ({want})")
        return
    run_script("scripts/make_synthetic_data.py", "--out", str(data_dir), "--seed", str(args.seed),
               "--n-patients", str(args.n_patients), "--n-test", str(args.n_test), "--force")
    run_script("scripts/make_folds.py", "--data-dir", str(data_dir), "--seed", str(args.seed), "--force")
    run_script("scripts/filter_train.py", "--data-dir", str(data_dir))
    stamp.write_text(json.dumps(want))


def write_overrides(out_dir: Path, names, args) -> overrides.Overrides:
    """The demo sizes (configs/demo.py) as the sweep's overrides file <run_dir>/demo_overrides.json, read
    back and checked as `./run_train.sh --overrides` reads it (a starting point for a small-GPU sweep)."""
    path = out_dir / OVERRIDES_FILE
    overrides.write(path, {name: demo_fields(name, args.epochs, args.max_train_rows) for name in names})
    return overrides.load(path, names)


def train_all(data_dir: Path, out_dir: Path, args) -> list:
    """Every config x fold with the demo seed, `args.workers` train.py processes at a time (one CPU
    thread each) through the sweep's runner; returns the failures (the blend uses the other runs)."""
    from tqdm.auto import tqdm

    out_dir = out_dir.resolve()  # train.py runs from the repository root
    after = [*args.extra, "--data_dir", str(data_dir.resolve()), "--output_dir", str(out_dir)]
    # slowest first (mdl_2), so the workers finish together
    names = sorted(args.configs, key=lambda n: load_config(n).model != "mdl_2")
    sizes = write_overrides(out_dir, names, args)
    jobs = [sweep.Job(run, str(out_dir), sizes.args(run.config, after))
            for run in sweep.make_runs(names, args.folds, [DEMO_SEED])]
    print(f"  {len(jobs)} runs, {args.workers} at a time; logs in {out_dir / 'logs'}; sizes in {sizes.file}")
    (out_dir / "demo_runs.json").write_text(json.dumps([j.command()[2:] for j in jobs], indent=1))
    failures, times = [], {}
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    with tqdm(total=len(jobs), desc="training", unit="run", disable=False) as bar:
        def ended(res):
            name, fold = res.job.run.config, res.job.run.fold
            times.setdefault(name, []).append(res.seconds)
            if not res.ok:
                failures.append((name, fold, sweep.tail(res.job.log, 1)))
                tqdm.write(f"  FAILED {name} fold {fold}: {failures[-1][2]} (exit status {res.returncode}, "
                           f"log {res.job.log})")
            bar.set_postfix_str(f"{name} fold {fold} {res.seconds:.0f} s")
            bar.update()

        sweep.run_jobs(jobs, [one_thread] * args.workers, stop_on_failure=False, on_end=ended)
    for name, secs in times.items():
        print(f"  {name}: {len(secs)} run(s), {sum(secs) / len(secs):.0f} s each")
    return failures


def run_scores(out_dir: Path, configs) -> list[dict]:
    """Each finished run's last validation KL and its class prior (from its metrics.csv)."""
    from utils import checkpoint as ckpt

    rows = []
    for name in configs:
        for run in ckpt.finished_runs(out_dir, name):
            m = pd.read_csv(run / "metrics.csv").dropna(subset=["val_kl"])
            if len(m):
                rows.append({"config": name, "fold": run.parent.name[4:], "val_kl": float(m["val_kl"].iloc[-1]),
                             "prior_kl": float(m["prior_kl"].iloc[-1])})
    return rows


def table(report: dict, timings: dict, runs: list[dict] = ()) -> str:
    """The final table: OOF KL per config, the blend against the prior, and every run worse than its prior."""
    rows = [(cfg, kl) for cfg, kl in report["oof_kl"].items()]
    bad = [r for r in runs if r["val_kl"] > r["prior_kl"]]
    worse = {r["config"] for r in bad}
    lines = ["", f"{'':<26s}{'OOF KL':>8s}", "-" * 34]
    lines += [f"{cfg:<26s}{kl:8.4f}" + ("  !" if cfg in worse else "") for cfg, kl in rows]
    lines += ["-" * 34, f"{'blend (held-out KFold)':<26s}{report['blend_oof_kl']:8.4f}",
              f"{'class prior':<26s}{report['prior_kl']:8.4f}"]
    if report.get("oracle_kl") is not None:
        lines.append(f"{'oracle (latent probs)':<26s}{report['oracle_kl']:8.4f}")
    gain = 1 - report["blend_oof_kl"] / report["prior_kl"]
    lines += ["-" * 34, f"blend vs class prior: {100 * gain:.0f}% lower KL on {report['n_rows']} golden rows"]
    lines += [f"! {r['config']} fold {r['fold']}: validation KL {r['val_kl']:.4f} is worse than its class prior "
              f"{r['prior_kl']:.4f} (a failed run; see its learning_curve.png)" for r in bad]
    lines += [""]
    lines += [f"{'wall time ' + k:<26s}{v:7.0f} s" for k, v in timings.items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    for name in args.configs:
        load_config(name)  # unknown names fail here, before any work
    if any(f not in (0, 1, 2, 3) for f in args.folds):
        raise ConfigError(f"bad value for --folds: {args.folds} (the blend uses folds 0-3)")
    t_start = time.perf_counter()
    timings = {}
    work = Path(args.work_dir)
    data_dir = work / "datamount"
    out_dir = work / f"run_{datetime.now():%Y%m%d_%H%M%S}"
    while out_dir.exists():
        out_dir = out_dir.with_name(out_dir.name + "_")

    step(f"1/4 synthetic data in {data_dir}")
    t = time.perf_counter()
    make_data(data_dir, args)
    timings["data"] = time.perf_counter() - t

    step(f"2/4 training {len(args.configs)} config(s) x {len(args.folds)} fold(s) into {out_dir}")
    t = time.perf_counter()
    failures = train_all(data_dir, out_dir, args)
    timings["training"] = time.perf_counter() - t

    step("3/4 blend")
    t = time.perf_counter()
    report = blend.blend_runs(out_dir, data_dir, args.configs, epochs=args.blend_epochs)
    timings["blend"] = time.perf_counter() - t

    step("4/4 predict the synthetic test set")
    t = time.perf_counter()
    sub_path = out_dir / "submission.csv"
    sub, _ = predict_submission(data_dir, out_dir, device="cpu", num_workers=0)
    atomic_write_csv(sub_path, sub)
    print(f"  wrote {sub_path}: {len(sub)} row(s)")
    test_latent = data_dir / "synthetic_test_latent.csv"  # the synthetic test set's latent probabilities
    if test_latent.is_file():
        report["test_kl_vs_latent"] = score(pd.read_csv(test_latent), pd.read_csv(sub_path))
    try:
        eeg_id = int(pd.read_csv(data_dir / "test.csv")["eeg_id"].iloc[0])
        run_script("scripts/plot_sample.py", "--eeg-id", str(eeg_id), "--data-dir", str(data_dir), "--config", "cfg_5a",
                   "--out", str(out_dir / f"sample_{eeg_id}.png"), "--output-dir", str(out_dir))
    except (DataError, ConfigError) as err:  # a picture is not worth failing the demo for
        print(f"  (no sample plot: {err})")
    timings["predict"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    runs = run_scores(out_dir, args.configs)
    print(table(report, timings, runs))
    if "test_kl_vs_latent" in report:
        print(f"test set: KL of the submission against the latent probabilities {report['test_kl_vs_latent']:.4f}")
    print(f"outputs: {out_dir} (submission.csv, {BLEND_FILE}, blend_weights_kl.png, per-run learning curves)")
    summary = {"oof_kl": report["oof_kl"], "blend_oof_kl": report["blend_oof_kl"], "prior_kl": report["prior_kl"],
               "oracle_kl": report.get("oracle_kl"), "n_rows": report["n_rows"], "timings": timings,
               "failures": failures, "out_dir": str(out_dir), "test_kl_vs_latent": report.get("test_kl_vs_latent"),
               "runs": runs, "runs_worse_than_prior": [r for r in runs if r["val_kl"] > r["prior_kl"]]}
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    if failures:
        raise DataError(f"{len(failures)} training run(s) failed (see {out_dir / 'logs'}); the blend used the others")
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))

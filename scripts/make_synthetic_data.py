"""Write a synthetic dataset in the Kaggle layout: python scripts/make_synthetic_data.py [--out datamount]."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic import generate_dataset  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import run_cli  # noqa: E402


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="datamount", help="data folder to write (default: datamount)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-patients", type=int, default=110, help="train patients (about 4.3 eegs each)")
    ap.add_argument("--n-test", type=int, default=8, help="test recordings (50 s each)")
    ap.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    args = ap.parse_args(argv)
    s = generate_dataset(args.out, seed=args.seed, n_patients=args.n_patients, n_test=args.n_test, force=args.force)
    print(f"wrote {s['out_dir']}: {s['patients']} patients, {s['eegs']} train eegs, {s['rows']} train.csv rows, "
          f"{s['spectrograms']} spectrograms, {s['test_eegs']} test eegs, synthetic_latent.csv "
          f"in {s['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))

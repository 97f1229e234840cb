"""train_folded.csv -> train_folded_6k6.csv, _6k6c.csv, _6k6c_1up.csv (docs/solution.md §4 row selection)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.selection import write_training_sets  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.io import require_dir, run_cli  # noqa: E402


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default="datamount")
    args = ap.parse_args(argv)
    t0 = time.time()
    data_dir = require_dir(args.data_dir)
    counts = write_training_sets(data_dir)
    for name, n in counts.items():
        print(f"wrote {data_dir / name}: {n} rows")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Two DDP processes on CPU (gloo via torchrun): one run folder, validation gathered in row order."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import train
from data.signal import LOGIT_COLS
from utils import checkpoint as ckpt
from engine.build import build_dataset, build_model
from utils.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off"]


def test_two_cpu_processes_match_one(tiny_data, tmp_path):
    fold0 = pd.read_csv(tiny_data / "train_folded_6k6.csv").query("fold == 0")  # 2 rows of one patient
    rows = pd.concat([fold0.assign(label_id=fold0["label_id"] * 10 + k) for k in range(3)], ignore_index=True)
    assert len(rows) == 6  # 6 validation rows in fold 0, none of a training patient
    rows.to_csv(tiny_data / "val_all.csv", index=False)
    out = tmp_path / "out"
    args = ["-C", "cfg_2a", "--fold", "0", "--seed", "11", "--epochs", "2", "--data_dir", str(tiny_data),
            "--output_dir", str(out), "--val_df", "val_all.csv", "--max_val_rows", "5", *SMALL]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--log-dir", str(tmp_path / "torchrun_logs"),
                          str(ROOT / "train.py"), *args], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.count("done:") == 1  # only rank 0 reports and writes

    d = ckpt.run_dir(out, "cfg_2a", 0, 11)
    assert json.loads((d / "run_info.json").read_text())["world_size"] == 2
    # 6 train rows over 2 ranks, batch 2 per rank: 1 step per epoch
    assert pd.read_csv(d / "metrics.csv")["step"].tolist() == [1, 2]
    logits = pd.read_csv(d / "val_logits.csv")
    assert list(logits.columns) == ["eeg_id", "label_id", *LOGIT_COLS]
    assert logits["label_id"].tolist() == rows["label_id"].head(5).tolist()  # 3 + 2 rows, none twice

    # the gathered logits are exactly what one process predicts with the saved weights, row by row
    cfg = train.parse_args(args)[0]
    model = build_model(cfg)
    model.load_state_dict(torch.load(d / ckpt.CHECKPOINT_FILE, weights_only=True)["model"])
    ds = build_dataset(rows.head(5), cfg, mode="val")
    single, _ = train.predict_logits(model, ds, cfg, DistInfo(), contextlib.nullcontext)
    np.testing.assert_allclose(logits[LOGIT_COLS].to_numpy(), single, rtol=1e-4, atol=1e-5)

"""The demo pipeline at a small size: data -> folds -> selection -> training -> blend -> submission -> table."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from configs.demo import demo_overrides
from data.signal import LABEL_COLS
from inference import blend

from inference import submission
from scripts import demo

ROOT = Path(__file__).resolve().parents[1]


def test_small_demo_end_to_end(tmp_path):
    work = tmp_path / "demo"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--work-dir", str(work), "--configs", "cfg_2a", "cfg_1",
           "--folds", "0", "1", "--n-patients", "24", "--n-test", "3", "--epochs", "1", "--max-train-rows", "16",
           "--blend-epochs", "20", "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list(work.glob("run_*"))
    assert len(runs) == 1
    out = runs[0]
    sizes = json.loads((out / demo.OVERRIDES_FILE).read_text())
    for name in ("cfg_2a", "cfg_1"):
        for fold in (0, 1):
            run = out / name / f"fold{fold}" / f"seed{demo.DEMO_SEED}"
            assert (run / "checkpoint.pth").is_file() and (run / "val_logits.csv").is_file()
            saved = json.loads((run / "config.json").read_text())
            assert saved["pretrained"] is False and saved["epochs"] == 1  # the demo overrides reached train.py
            assert saved["max_train_rows"] == sizes[name]["max_train_rows"] == 16  # through its overrides file
    summary = json.loads((out / "demo_summary.json").read_text())
    golden = pd.read_csv(work / "datamount" / blend.GOLDEN_FILE)
    assert summary["n_rows"] == int(golden["fold"].isin([0, 1]).sum())
    assert set(summary["oof_kl"]) == {"cfg_2a", "cfg_1"} and summary["failures"] == []
    assert len(summary["runs"]) == 4  # every run scored against its class prior
    assert summary["oracle_kl"] is not None and summary["oracle_kl"] < summary["prior_kl"]
    # the final table carries every figure of the summary
    for key in ("cfg_2a", "cfg_1", "blend (held-out KFold)", "class prior", "oracle", "wall time total"):
        assert key in proc.stdout
    assert f"{summary['blend_oof_kl']:.4f}" in proc.stdout
    sub = pd.read_csv(out / "submission.csv")
    test_ids = pd.read_csv(work / "datamount" / "test.csv")["eeg_id"]
    submission.check_submission(sub, test_ids, ["eeg_id", *LABEL_COLS])
    for png in ("blend_weights_kl.png", f"sample_{int(test_ids.iloc[0])}.png"):
        assert (out / png).stat().st_size > 10_000
    # a second demo would reuse the data: make_data sees its stamp and writes nothing
    before = (work / "datamount" / "train.csv").stat().st_mtime_ns
    args = demo.parse_args(["--work-dir", str(work), "--n-patients", "24", "--n-test", "3"])
    demo.make_data(work / "datamount", args)
    assert (work / "datamount" / "train.csv").stat().st_mtime_ns == before


def test_demo_overrides_keep_each_config_shape():
    from utils.config import apply_overrides, load_config

    for name in blend.ALL_CONFIGS:
        base = load_config(name)
        cfg = apply_overrides(load_config(name), demo_overrides(name))
        assert cfg.pretrained is False and cfg.model == base.model and cfg.dataset == base.dataset
        assert cfg.train_df == base.train_df
        if base.model != "mdl_2":
            assert cfg.backbone == "test_efficientnet" and cfg.spec_args["n_mels"] == 16
            assert cfg.spec_args["hop_length"] == 8 * base.spec_args["hop_length"]
            assert cfg.spec_args["f_max"] == base.spec_args["f_max"]


def test_demo_sizes_go_through_the_sweeps_overrides_file(tmp_path):
    """The demo writes its sizes as an overrides file and trains with what the sweep reads back from it: the
    same train.py arguments as demo_overrides; `./run_train.sh --overrides` takes that file as it is."""
    from sweep import cli

    args = demo.parse_args(["--epochs", "3", "--max-train-rows", "40"])
    sizes = demo.write_overrides(tmp_path, blend.ALL_CONFIGS, args)
    assert sizes.file == str(tmp_path / "demo_overrides.json")
    opts = cli.parse_args(["--overrides", sizes.file, "--", "--epochs", "1"])
    for name in blend.ALL_CONFIGS:
        assert sizes.args(name) == demo_overrides(name, 3, 40)
        assert opts.run_args(name) == [*demo_overrides(name, 3, 40), "--epochs", "1"]


def test_demo_rejects_unknown_config_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--work-dir", str(tmp_path / "w"),
                           "--configs", "cfg_9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown config 'cfg_9'" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_table_marks_runs_worse_than_their_class_prior():
    report = {"oof_kl": {"cfg_3": 0.9, "cfg_1": 0.5}, "blend_oof_kl": 0.45, "prior_kl": 0.85, "n_rows": 10}
    runs = [{"config": "cfg_3", "fold": "1", "val_kl": 1.70, "prior_kl": 0.87},
            {"config": "cfg_1", "fold": "0", "val_kl": 0.50, "prior_kl": 0.87}]
    text = demo.table(report, {"total": 1.0}, runs)
    assert "cfg_3 fold 1: validation KL 1.7000 is worse than its class prior 0.8700" in text
    assert "cfg_1 fold 0" not in text
    assert any(ln.startswith("cfg_3") and ln.endswith("!") for ln in text.splitlines())
    assert not any(ln.startswith("cfg_1") and ln.endswith("!") for ln in text.splitlines())

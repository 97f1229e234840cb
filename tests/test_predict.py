"""Inference (docs/solution.md §10): run folders -> a valid submission equal to running the models by hand; clear errors."""
import numpy as np
import pandas as pd
import pytest
import torch

from data.signal import LABEL_COLS
from inference import blend
from engine.build import build_dataset, build_model
from utils.io import DataError, run_cli
from utils.metric import softmax

from conftest import make_run, tiny_cfg, write_recording
from inference import submission
from scripts import predict


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "out"
    made = {"cfg_5a": [make_run(out, "cfg_5a", 0, 1), make_run(out, "cfg_5a", -1, 2)],
            "cfg_2a": [make_run(out, "cfg_2a", 1, 3)]}
    blend.save_blend(out / blend.BLEND_FILE, ["cfg_5a", "cfg_2a"], [0.7, 0.4],
                     [0.1, -0.2, 0.0, 0.3, -0.1, 0.05], {})
    return out, made


def by_hand(made, data_dir, test_ids):
    """Each model on the whole test set as one batch, built from the config module + the same overrides."""
    w, c = {"cfg_5a": 0.7, "cfg_2a": 0.4}, np.array([0.1, -0.2, 0.0, 0.3, -0.1, 0.05])
    df = pd.DataFrame({"eeg_id": test_ids})
    total = 0
    for name, run_dirs in made.items():
        per_run = []
        for run in run_dirs:
            cfg = tiny_cfg(name)
            cfg.data_dir, cfg.pretrained = str(data_dir), False
            model = build_model(cfg)
            model.load_state_dict(torch.load(run / "checkpoint.pth", weights_only=True)["model"])
            ds = build_dataset(df, cfg, mode="test")
            items = [ds[i] for i in range(len(ds))]
            assert all(int(it["center"]) == 5000 for it in items)
            batch = {k: torch.stack([it[k] for it in items]) for k in ("input", "center")}
            with torch.no_grad():
                per_run.append(model.eval()(batch)["logits"].double().numpy())
        total = total + w[name] * np.mean(per_run, axis=0)
    return softmax(total + c)


def test_synthetic_test_set_matches_models_run_by_hand(tiny_data, runs, tmp_path):
    out, made = runs
    sub_path = tmp_path / "submission.csv"
    assert run_cli(predict.main, ["--data-dir", str(tiny_data), "--output-dir", str(out), "--out", str(sub_path),
                                  "--device", "cpu", "--num-workers", "0"]) == 0
    sub = pd.read_csv(sub_path)
    test_ids = pd.read_csv(tiny_data / "test.csv")["eeg_id"].to_numpy()
    assert list(sub.columns) == ["eeg_id", *LABEL_COLS] and sub["eeg_id"].tolist() == test_ids.tolist()
    np.testing.assert_allclose(sub[LABEL_COLS].sum(axis=1), 1, atol=1e-9)
    np.testing.assert_allclose(sub[LABEL_COLS].to_numpy(), by_hand(made, tiny_data, test_ids), atol=1e-5)
    assert np.abs(sub[LABEL_COLS].to_numpy()[0] - sub[LABEL_COLS].to_numpy()[1]).max() > 1e-4  # not a constant


def test_real_example_gives_valid_submission(shared_sample, runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HMS_CACHE_DIR", str(tmp_path / "cache"))  # the shared folder is read-only
    out, made = runs
    sub_path = tmp_path / "sub.csv"
    predict.main(["--data-dir", str(shared_sample), "--output-dir", str(out), "--out", str(sub_path),
                  "--num-workers", "0", "--batch-size", "4"])
    sub = pd.read_csv(sub_path)
    sample = pd.read_csv(shared_sample / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["eeg_id"].tolist() == sample["eeg_id"].tolist()
    np.testing.assert_allclose(sub[LABEL_COLS].to_numpy(), by_hand(made, shared_sample, sample["eeg_id"]), atol=1e-5)
    assert any((tmp_path / "cache").rglob("3911565283_*.npy"))


def test_missing_blend_file_or_checkpoints_are_clear_errors(tiny_data, runs, tmp_path, capsys):
    out, made = runs
    args = ["--data-dir", str(tiny_data), "--output-dir", str(out), "--out", str(tmp_path / "s.csv"),
            "--num-workers", "0"]
    assert run_cli(predict.main, args + ["--blend", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: blend file not found" in capsys.readouterr().err
    blend.save_blend(tmp_path / "b.json", ["cfg_5a", "cfg_3"], [0.5, 0.5], [0] * 6, {})
    assert run_cli(predict.main, args + ["--blend", str(tmp_path / "b.json")]) == 2
    assert "no checkpoints for cfg_3" in capsys.readouterr().err
    (made["cfg_2a"][0] / "config.json").unlink()
    assert run_cli(predict.main, args) == 2
    assert "config.json: run config not found" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_check_submission_rejects_bad_rows():
    ok = pd.DataFrame({"eeg_id": [1, 2], **{c: [1 / 6, 1 / 6] for c in LABEL_COLS}})
    submission.check_submission(ok, [1, 2], ["eeg_id", *LABEL_COLS])
    bad = ok.copy()
    bad.loc[0, "other_vote"] = 0.5
    with pytest.raises(DataError, match="sums to 1"):
        submission.check_submission(bad, [1, 2], ["eeg_id", *LABEL_COLS])
    with pytest.raises(DataError, match="eeg_ids do not match"):
        submission.check_submission(ok, [1, 3], ["eeg_id", *LABEL_COLS])
    with pytest.raises(DataError, match="columns"):
        submission.check_submission(ok[["eeg_id", *LABEL_COLS[::-1]]], [1, 2], ["eeg_id", *LABEL_COLS])


def test_kaggle_test_recording_not_50_s_is_scored_as_before_with_a_warning(tiny_data, runs, tmp_path, capsys):
    """A 75 s test file: its first 50 s scored (as Kaggle's 50 s files are); a 30 s one: zero-padded."""
    out, made = runs
    write_recording(tiny_data / "test_eegs" / "2000.parquet", 200 * 75, seed=10)
    write_recording(tiny_data / "test_eegs" / "2001.parquet", 200 * 30, seed=11)
    sub_path = tmp_path / "sub.csv"
    assert run_cli(predict.main, ["--data-dir", str(tiny_data), "--output-dir", str(out), "--out", str(sub_path),
                                  "--num-workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning: eeg 2000: 75.0 s long; only its first 50 s is scored" in err and "--recording" in err
    assert "warning: eeg 2001: 30.0 s long, shorter than the 50 s window: zero-padded by 20.0 s" in err
    sub = pd.read_csv(sub_path)
    np.testing.assert_allclose(sub[LABEL_COLS].to_numpy(), by_hand(made, tiny_data, [2000, 2001]), atol=1e-5)

"""Inference (docs/solution.md §10): run folders -> a valid submission equal to running the models by hand; clear errors;
each run under its own config's autocast dtype (or --amp-dtype), named in the header line; an unusable --device is one line."""
import contextlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from data.signal import LABEL_COLS
from inference import blend
from engine.build import build_dataset, build_model
from engine.precision import resolve_amp_dtype
from utils.checkpoint import load_run_config
from utils.io import DataError, run_cli
from utils.metric import softmax

from conftest import make_run, tiny_cfg, write_recording
from inference import ensemble, submission
from scripts import predict


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "out"
    made = {"cfg_5a": [make_run(out, "cfg_5a", 0, 1), make_run(out, "cfg_5a", -1, 2)],
            "cfg_2a": [make_run(out, "cfg_2a", 1, 3)]}
    blend.save_blend(out / blend.BLEND_FILE, ["cfg_5a", "cfg_2a"], [0.7, 0.4],
                     [0.1, -0.2, 0.0, 0.3, -0.1, 0.05], {})
    return out, made


def by_hand(made, data_dir, test_ids, amp=None):
    """Each model on the whole test set as one batch, built from the config module + the same overrides
    (under CPU autocast to `amp`, a torch dtype, when given)."""
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
            with torch.no_grad(), (torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()):
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


# --- devices and precision (issue 17.7) --------------------------------------------------------------------
def predict_args(data_dir, out, sub_path, *extra):
    return ["--data-dir", str(data_dir), "--output-dir", str(out), "--out", str(sub_path), "--device", "cpu",
            "--num-workers", "0", *extra]


def test_unusable_device_is_one_error_line(tiny_data, runs, tmp_path, capsys, monkeypatch):
    """No CUDA, a CUDA index beyond the GPUs there (here: one GPU, faked), a malformed name, an unknown
    --amp-dtype: exit 2 and one line `error: ...` before anything is read or written, Kaggle layout and
    --recording alike."""
    out, made = runs
    sub_path, pred = tmp_path / "sub.csv", tmp_path / "pred"
    rec = tmp_path / "rec.parquet"
    write_recording(rec, 200 * 60, seed=3)
    kaggle = predict_args(tiny_data, out, sub_path)
    recs = ["--recording", str(rec), "--output-dir", str(out), "--out-dir", str(pred), "--num-workers", "0"]

    def fails(args, message):
        assert run_cli(predict.main, args) == 2
        captured = capsys.readouterr()
        err = captured.err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert captured.out == ""  # checked first: no header, nothing scored

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args in (kaggle, recs):
        fails(args + ["--device", "cuda"], "--device cuda: CUDA is not available on this machine")
        fails(args + ["--device", "cuda:1"], "--device cuda:1: CUDA is not available on this machine")
        fails(args + ["--device", "foo"], "--device 'foo': not a device (use auto, cpu, cuda or cuda:N)")
        fails(args + ["--device", "cuda:x"], "--device 'cuda:x': not a device")
        fails(args + ["--device", "meta"], "--device meta: meta devices are not supported here")
        fails(args + ["--amp-dtype", "fp16"], "--amp-dtype: invalid choice: 'fp16'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for args in (kaggle, recs):
        fails(args + ["--device", "cuda:1"], "--device cuda:1: no such device; this machine has 1 cuda device(s) (cuda:0)")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    fails(kaggle + ["--device", "cuda:3"], "this machine has 3 cuda device(s) (cuda:0 to cuda:2)")
    assert ensemble.resolve_device("cuda:2") == torch.device("cuda", 2)  # in range: accepted
    assert ensemble.resolve_device("cpu") == torch.device("cpu")
    assert not sub_path.exists() and not pred.exists()


def test_amp_dtype_bfloat16_on_the_cpu_is_close_and_default_is_float32(tiny_data, runs, tmp_path, capsys):
    """On the CPU the configs resolve to float32: the default run equals one forced to float32 exactly;
    --amp-dtype bfloat16 moves the probabilities (by less than 0.02) and equals the models run by hand
    under bfloat16 autocast."""
    out, made = runs
    probs, headers = {}, {}
    for amp in (None, "float32", "bfloat16"):
        sub_path = tmp_path / f"sub_{amp}.csv"
        extra = ["--amp_dtype", amp] if amp else []  # the other spelling works too
        assert run_cli(predict.main, predict_args(tiny_data, out, sub_path, *extra)) == 0
        headers[amp] = capsys.readouterr().out.splitlines()[0]
        probs[amp] = pd.read_csv(sub_path)[LABEL_COLS].to_numpy()
    assert headers[None] == headers["float32"] == "2 recording(s), 2 config(s), 3 run(s), device cpu, amp float32"
    assert headers["bfloat16"] == "2 recording(s), 2 config(s), 3 run(s), device cpu, amp bfloat16"
    np.testing.assert_array_equal(probs[None], probs["float32"])
    test_ids = pd.read_csv(tiny_data / "test.csv")["eeg_id"].to_numpy()
    np.testing.assert_allclose(probs["float32"], by_hand(made, tiny_data, test_ids), atol=1e-5)
    diff = np.abs(probs["bfloat16"] - probs["float32"]).max()
    assert 1e-4 < diff < 0.02, diff
    np.testing.assert_allclose(probs["bfloat16"], by_hand(made, tiny_data, test_ids, torch.bfloat16), atol=1e-3)
    np.testing.assert_allclose(probs["bfloat16"].sum(axis=1), 1, atol=1e-9)


def test_each_run_runs_under_its_own_configs_autocast_unless_overridden(tiny_data, runs, tmp_path, capsys, monkeypatch):
    """cfg_5a's two runs share one pass over the data but differ in precision (seed 2 trained with cpu_amp:
    bfloat16 on the CPU); cfg_2a names amp_dtype bfloat16. Each model's forward sees its own run's
    autocast (resolve_amp_dtype of its config); --amp-dtype float32 / bfloat16 replaces it for every run."""
    out, made = runs
    for run, key, value in ((made["cfg_5a"][1], "cpu_amp", True), (made["cfg_2a"][0], "amp_dtype", "bfloat16")):
        saved = json.loads((run / "config.json").read_text())
        saved[key] = value
        (run / "config.json").write_text(json.dumps(saved))
    seen, passes = [], []
    load_model, build = ensemble.load_model, ensemble.build_dataset

    def spy_load(run_dir, cfg, device):
        model = load_model(run_dir, cfg, device)
        model.register_forward_pre_hook(lambda m, args: seen.append(
            (run_dir, str(torch.get_autocast_dtype("cpu")).removeprefix("torch.")
             if torch.is_autocast_enabled("cpu") else "float32")))
        return model

    def spy_build(df, cfg, mode):
        passes.append(cfg.name)
        return build(df, cfg, mode=mode)

    monkeypatch.setattr(ensemble, "load_model", spy_load)
    monkeypatch.setattr(ensemble, "build_dataset", spy_build)
    runs_in_order = [*made["cfg_5a"], *made["cfg_2a"]]
    own = {run: resolve_amp_dtype(load_run_config(run, tiny_data), torch.device("cpu")) for run in runs_in_order}
    assert list(own.values()) == ["float32", "bfloat16", "bfloat16"]
    for amp, expected, header in ((None, own, "amp bfloat16 (2 runs), float32 (1 run)"),
                                  ("float32", dict.fromkeys(own, "float32"), "amp float32"),
                                  ("bfloat16", dict.fromkeys(own, "bfloat16"), "amp bfloat16")):
        seen.clear(), passes.clear()
        extra = ["--amp-dtype", amp] if amp else []
        assert run_cli(predict.main, predict_args(tiny_data, out, tmp_path / "sub.csv", *extra)) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(f"device cpu, {header}")
        assert dict(seen) == expected and len(seen) == len(expected)  # one batch: each model once
        assert sorted(passes) == ["cfg_2a", "cfg_5a"]  # cfg_5a's runs share one data pass (precision is run-only)


def test_cuda_resolves_each_configs_autocast_dtype(tiny_data, runs):
    """What the header and the models use on CUDA (resolved without a GPU): float16 for mixed_precision
    configs (all of the reproduction's), float32 for one trained without it, --amp-dtype over both."""
    out, made = runs
    loaded = {name: [(run, load_run_config(run, tiny_data)) for run in dirs] for name, dirs in made.items()}
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert ensemble.describe_amp(loaded, cuda) == "amp float16"
    assert ensemble.describe_amp(loaded, cpu) == "amp float32"
    assert ensemble.describe_amp(loaded, cuda, "bfloat16") == "amp bfloat16"
    loaded["cfg_2a"][0][1].mixed_precision = False
    assert ensemble.describe_amp(loaded, cuda) == "amp float16 (2 runs), float32 (1 run)"
    assert [ensemble.run_amp_dtype(cfg, cuda) for _, cfg in loaded["cfg_2a"]] == ["float32"]
    assert ensemble.run_amp_dtype(loaded["cfg_2a"][0][1], cuda, "float16") == "float16"
    with pytest.raises(DataError, match="--amp-dtype: 'fp16'"):
        ensemble.run_amp_dtype(loaded["cfg_2a"][0][1], cuda, "fp16")


def test_recording_header_names_the_precision_and_amp_dtype_applies(runs, tmp_path, capsys):
    """--recording: the same precision as the Kaggle layout, named in its header line."""
    out, made = runs
    rec = tmp_path / "rec.parquet"
    write_recording(rec, 200 * 60, seed=3)
    probs = {}
    for amp in (None, "bfloat16"):
        pred = tmp_path / f"pred_{amp}"
        extra = ["--amp-dtype", amp] if amp else []
        assert run_cli(predict.main, ["--recording", str(rec), "--output-dir", str(out), "--out-dir", str(pred),
                                      "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--num-workers", "0",
                                      *extra]) == 0
        header = [line for line in capsys.readouterr().out.splitlines() if "run(s), device" in line]
        precision = f"amp {amp}" if amp else "path fp32 (--fast-path auto)"  # 2 windows: too few to calibrate
        assert header == [f"1 recording(s), 2 window(s), 2 config(s), 3 run(s), device cpu, {precision}"]
        probs[amp] = pd.read_csv(pred / "rec_windows.csv")[LABEL_COLS].to_numpy()
    diff = np.abs(probs["bfloat16"] - probs[None]).max()
    assert 1e-4 < diff < 0.02, diff

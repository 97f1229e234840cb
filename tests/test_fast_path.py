"""predict.py --recording's fast path (inference/fast_path.py) and scripts/bench_recording.py: the chosen path's
probabilities against an independent float32 forward, a path beyond the tolerance never chosen, --amp-dtype and
--fast-path off bypassing the selection, and the benchmark's table. Timings are faked where a choice must be
forced; no assert reads a real timing."""
import contextlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import conftest
from configs.demo import demo_overrides
from configs.ensemble import CONFIGS
from data.signal import FS, LABEL_COLS, WINDOW
from engine.build import build_dataset, build_model
from inference import blend, ensemble, fast_path, timeline
from utils.checkpoint import load_run_config
from utils.io import run_cli
from utils.metric import softmax

from conftest import make_run, write_recording
from scripts import predict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_recording  # noqa: E402

WEIGHTS, BIAS = {"cfg_3": 0.6, "cfg_2a": 0.5}, [0.1, -0.1, 0.0, 0.2, 0.0, -0.05]
N_WINDOWS, BATCH = 12, 4
FAKE_SECONDS = {"fp32": 1.0, "fp32+cl": 0.9, "bf16": 0.5, "bf16+cl": 0.4}  # bf16+cl "fastest", then bf16


@pytest.fixture
def two_configs(tmp_path, monkeypatch):
    """A demo-size 2D run (cfg_3: channels_last applies), a small 1D run (cfg_2a: it does not), a blend,
    and a 160 s recording (12 windows at stride 10 s)."""
    monkeypatch.setitem(conftest.TINY, "cfg_3", demo_overrides("cfg_3"))
    out = tmp_path / "out"
    made = {"cfg_3": make_run(out, "cfg_3", 0, 1), "cfg_2a": make_run(out, "cfg_2a", 0, 2)}
    blend.save_blend(out / blend.BLEND_FILE, list(WEIGHTS), list(WEIGHTS.values()), BIAS, {})
    rec = tmp_path / "rec.parquet"
    write_recording(rec, (50 + 10 * (N_WINDOWS - 1)) * FS, seed=5)
    monkeypatch.setattr(fast_path, "cpu_bf16_flags", lambda: ["avx512_bf16"])  # bf16 a candidate on any CPU
    return out, made, rec


@pytest.fixture
def fake_clock(monkeypatch):
    """timed_forward's real logits with the seconds of FAKE_SECONDS; calibration allowed on few windows."""
    real = fast_path.timed_forward

    def timed(model, batch, path, device):
        return FAKE_SECONDS[path.name], real(model, batch, path, device)[1]

    monkeypatch.setattr(fast_path, "timed_forward", timed)
    monkeypatch.setattr(fast_path, "MAX_CALIBRATION_SHARE", float("inf"))
    return timed


def by_hand(made, rec, tmp_path, amp=None, channels_last=()) -> np.ndarray:
    """The blend of each run rebuilt from its config.json, on the windows the Kaggle dataset reads from a copy
    of the recording, in batches of BATCH under torch.no_grad (and CPU autocast to `amp`, a torch dtype or
    {config: dtype or None}); `channels_last`: the configs built with cfg.channels_last."""
    data = tmp_path / "by_hand"
    (data / "test_eegs").mkdir(parents=True, exist_ok=True)
    shutil.copy(rec, data / "test_eegs" / "7.parquet")
    df = pd.DataFrame({"eeg_id": 7, "eeg_label_offset_seconds": np.arange(N_WINDOWS) * 10.0})
    total = np.zeros((N_WINDOWS, 6))
    for name, run in made.items():
        cfg = load_run_config(run, data, str(data / "cache"))
        cfg.channels_last = name in channels_last
        model = build_model(cfg)
        model.load_state_dict(torch.load(run / "checkpoint.pth", weights_only=True)["model"])
        ds = build_dataset(df, cfg, mode="test")
        logits, dtype = [], amp.get(name) if isinstance(amp, dict) else amp
        for lo in range(0, N_WINDOWS, BATCH):
            items = [ds[i] for i in range(lo, min(lo + BATCH, N_WINDOWS))]
            batch = {k: torch.stack([it[k] for it in items]) for k in ("input", "center")}
            with torch.no_grad(), (torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()):
                logits.append(model.eval()(batch)["logits"].double().numpy())
        total += WEIGHTS[name] * np.concatenate(logits)
    return softmax(total + np.array(BIAS))


def score(out, rec, tmp_path, capsys, *extra) -> tuple[np.ndarray, list[str]]:
    """predict.py --recording as a user runs it: (window probabilities, printed lines)."""
    pred = tmp_path / "pred"
    args = ["--recording", str(rec), "--output-dir", str(out), "--out-dir", str(pred), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu", "--num-workers", "0", "--batch-size", str(BATCH), *extra]
    assert run_cli(predict.main, args) == 0
    table = pd.read_csv(pred / "rec_windows.csv")
    assert len(table) == N_WINDOWS
    return table[LABEL_COLS].to_numpy(), capsys.readouterr().out.splitlines()


def header(lines) -> str:
    (line,) = [ln for ln in lines if "run(s), device" in ln]
    return line


def forbid_calibration(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("calibrated although no path is to be chosen")

    monkeypatch.setattr(fast_path, "measure", fail)


# --- predict.py --recording ----------------------------------------------------------------------------
def test_chosen_paths_are_applied_and_within_tolerance_of_independent_fp32(two_configs, fake_clock, tmp_path, capsys):
    """bf16+cl (cfg_3) and bf16 (cfg_2a, a 1D model: no channels_last) come out fastest and within 0.01: they are
    chosen, named in the header, and the windows' probabilities equal the models run by hand that way and lie
    within 0.01 of the models run by hand in float32."""
    out, made, rec = two_configs
    probs, lines = score(out, rec, tmp_path, capsys)
    assert header(lines).endswith("device cpu, path cfg_3 bf16+cl, cfg_2a bf16 (--fast-path auto)")
    calib = [ln for ln in lines if ln.startswith("fast path ")]
    assert [ln.split(":")[0] for ln in calib] == ["fast path cfg_3", "fast path cfg_2a"]
    assert re.search(r"fp32 \S+ win/s \| fp32\+cl \S+ win/s, diff \S+ \| bf16 .* -> bf16\+cl", calib[0])
    assert "cl" not in calib[1].split("->")[0] and calib[1].split("-> ")[1].startswith("bf16 ")
    fp32 = by_hand(made, rec, tmp_path)
    assert np.abs(probs - fp32).max() <= fast_path.TOLERANCE
    assert np.abs(probs - fp32).max() > 1e-5  # bf16 really ran
    np.testing.assert_allclose(probs, by_hand(made, rec, tmp_path, torch.bfloat16, ["cfg_3"]), atol=1e-5, rtol=0)


def test_path_beyond_the_tolerance_is_never_chosen(two_configs, fake_clock, tmp_path, capsys, monkeypatch):
    """bf16+cl, the fastest, made to give each class the next class's logit: its difference passes 0.01 and
    bf16 (next fastest, within the tolerance) is kept; with a tolerance of 0 only float32 itself remains
    (or a path that gave float32's numbers exactly)."""
    out, made, rec = two_configs
    fake = fast_path.timed_forward

    def perturbed(model, batch, path, device):
        seconds, logits = fake(model, batch, path, device)
        return seconds, np.roll(logits, 1, axis=1) if path.name == "bf16+cl" else logits

    monkeypatch.setattr(fast_path, "timed_forward", perturbed)
    probs, lines = score(out, rec, tmp_path, capsys)
    assert header(lines).endswith("device cpu, path bf16 (--fast-path auto)")
    line = next(ln for ln in lines if ln.startswith("fast path cfg_3"))
    assert float(re.search(r"bf16\+cl \S+ win/s, diff (\S+)", line).group(1)) > fast_path.TOLERANCE
    assert np.abs(probs - by_hand(made, rec, tmp_path)).max() <= fast_path.TOLERANCE
    monkeypatch.setattr(fast_path, "TOLERANCE", 0.0)
    probs0, lines = score(out, rec, tmp_path, capsys)
    for line in (ln for ln in lines if ln.startswith("fast path ")):
        chosen = line.split("-> ")[1].split()[0]  # float32, or a path that gave float32's numbers exactly
        assert chosen == "fp32" or re.search(rf"{re.escape(chosen)} \S+ win/s, diff 0\.0e\+00", line), line
    np.testing.assert_allclose(probs0, by_hand(made, rec, tmp_path), atol=1e-5, rtol=0)


def test_amp_dtype_bypasses_the_selection(two_configs, tmp_path, capsys, monkeypatch):
    out, made, rec = two_configs
    forbid_calibration(monkeypatch)
    probs, lines = score(out, rec, tmp_path, capsys, "--amp-dtype", "bfloat16")
    assert header(lines).endswith("device cpu, amp bfloat16")
    assert not any(ln.startswith("fast path") for ln in lines)
    np.testing.assert_allclose(probs, by_hand(made, rec, tmp_path, torch.bfloat16), atol=1e-5, rtol=0)


def test_off_gives_exactly_the_previous_outputs(two_configs, tmp_path, capsys, monkeypatch):
    """--fast-path off: no calibration, the old header, each run under its own config's precision (cfg_2a's run
    trained with cpu_amp: bfloat16), bitwise the ensemble's output without paths (the code before the fast path)."""
    out, made, rec = two_configs
    saved = json.loads((made["cfg_2a"] / "config.json").read_text())
    (made["cfg_2a"] / "config.json").write_text(json.dumps(dict(saved, cpu_amp=True)))
    forbid_calibration(monkeypatch)
    probs, lines = score(out, rec, tmp_path, capsys, "--fast-path", "off")
    assert header(lines).endswith("device cpu, amp bfloat16 (1 run), float32 (1 run)")
    assert not any(ln.startswith("fast path") for ln in lines)
    from data import recording

    weights, runs = ensemble.load_ensemble(out, None, rec.parent)
    store = recording.RecordingStore([recording.open_recording(rec)], tmp_path / "cache")
    windows = pd.DataFrame({"eeg_id": 0, "eeg_label_offset_seconds": np.arange(N_WINDOWS) * 10.0})
    before, _ = ensemble.ensemble_probs(weights, runs, windows, torch.device("cpu"), BATCH, 0, store)
    np.testing.assert_array_equal(probs, before)
    own = by_hand(made, rec, tmp_path, {"cfg_3": None, "cfg_2a": torch.bfloat16})  # each run's config precision
    np.testing.assert_allclose(probs, own, atol=1e-5, rtol=0)
    off_fp32 = np.abs(probs - by_hand(made, rec, tmp_path)).max()
    assert np.abs(probs - own).max() < 0.2 * off_fp32, off_fp32  # cfg_2a ran in bfloat16, not float32


def test_too_few_windows_keep_fp32_without_calibrating(two_configs, tmp_path, capsys, monkeypatch):
    """12 windows x 1 run cannot repay timing 4 (cfg_3) or 2 (cfg_2a) paths on a batch of 4: float32, untimed."""
    out, made, rec = two_configs
    forbid_calibration(monkeypatch)
    probs, lines = score(out, rec, tmp_path, capsys)
    assert header(lines).endswith("device cpu, path fp32 (--fast-path auto)")
    assert [ln for ln in lines if ln.startswith("fast path")] == [
        "fast path cfg_3: fp32 (12 window(s) x 1 run(s): too few to repay calibrating 4 paths)",
        "fast path cfg_2a: fp32 (12 window(s) x 1 run(s): too few to repay calibrating 2 paths)"]
    np.testing.assert_allclose(probs, by_hand(made, rec, tmp_path), atol=1e-5, rtol=0)


def test_kaggle_layout_runs_as_in_training(two_configs, fake_clock, tiny_data, tmp_path, capsys, monkeypatch):
    """The submission never calibrates (even where it would be allowed): each run under its config's precision."""
    out, made, rec = two_configs
    forbid_calibration(monkeypatch)
    sub = tmp_path / "sub.csv"
    assert run_cli(predict.main, ["--data-dir", str(tiny_data), "--output-dir", str(out), "--out", str(sub),
                                  "--device", "cpu", "--num-workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 recording(s), 2 config(s), 2 run(s), device cpu, amp float32"


def test_bad_fast_path_value_is_one_line(two_configs, tmp_path, capsys):
    out, made, rec = two_configs
    assert run_cli(predict.main, ["--recording", str(rec), "--output-dir", str(out), "--fast-path", "fast"]) == 2
    assert "--fast-path: invalid choice: 'fast'" in capsys.readouterr().err


# --- the module's pieces ----------------------------------------------------------------------------
def measured(name, seconds, diff):
    amp, *rest = name.split("+")
    path = fast_path.ForwardPath({"fp32": "float32", "bf16": "bfloat16"}[amp], "cl" in rest)
    return fast_path.Measured(path, seconds, 16, np.zeros((16, 6)), diff)


def test_choose_keeps_the_fastest_within_tolerance_and_fp32_unless_clearly_faster():
    ref = measured("fp32", 1.0, 0.0)
    assert fast_path.choose([ref, measured("bf16", 0.5, 0.0101), measured("fp32+cl", 0.8, 1e-7)]).path.name == "fp32+cl"
    assert fast_path.choose([ref, measured("bf16", 0.5, 0.01)]).path.name == "bf16"  # at the tolerance: kept
    assert fast_path.choose([ref, measured("bf16", 0.96, 1e-3)]).path.name == "fp32"  # 4% faster: not worth it
    assert fast_path.choose([ref, measured("bf16", 0.5, 1e-3)], tolerance=0).path.name == "fp32"


def test_candidates_bf16_only_with_cpu_support_channels_last_only_for_2d_never_fp16(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx2\n\nprocessor\t: 1\n")
    assert fast_path.cpu_bf16_flags(info) == ["avx512_bf16"]
    info.write_text("flags\t\t: fpu avx512f avx512_fp16 amx_tile\n")
    assert fast_path.cpu_bf16_flags(info) == [] and fast_path.cpu_bf16_flags(tmp_path / "absent") == []
    cfg_2d, cfg_1d = conftest.tiny_cfg("cfg_5a"), conftest.tiny_cfg("cfg_2a")
    cpu = torch.device("cpu")
    monkeypatch.setattr(fast_path, "cpu_bf16_flags", lambda: [])
    assert [p.name for p in fast_path.candidate_paths(cfg_2d, cpu)] == ["fp32", "fp32+cl"]
    assert [p.name for p in fast_path.candidate_paths(cfg_1d, cpu)] == ["fp32"]
    monkeypatch.setattr(fast_path, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert [p.name for p in fast_path.candidate_paths(cfg_2d, cpu)] == ["fp32", "fp32+cl", "bf16", "bf16+cl"]
    assert [p.name for p in fast_path.candidate_paths(cfg_1d, cpu)] == ["fp32", "bf16"]


def test_nothing_is_chosen_on_cuda_with_amp_dtype_or_off(two_configs, monkeypatch):
    """On CUDA each run keeps its config's autocast (float16 for the mixed_precision configs), as in training."""
    out, made, rec = two_configs
    forbid_calibration(monkeypatch)
    runs = {name: [(run, load_run_config(run, rec.parent))] for name, run in made.items()}
    windows = pd.DataFrame({"eeg_id": [0], "eeg_label_offset_seconds": [0.0]})
    for device, amp, mode in (("cuda", None, "auto"), ("cpu", "float32", "auto"), ("cpu", None, "off")):
        assert fast_path.choose_paths(runs, windows, torch.device(device), None, 16, amp, mode) is None


def test_channels_last_switch_keeps_weights_and_outputs():
    cfg = apply_demo("cfg_5a")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"input": torch.randn(2, WINDOW, 16), "center": torch.full((2,), WINDOW // 2)}
    with torch.no_grad():
        before = model(batch)["logits"]
        model.set_channels_last(True)
        assert model.channels_last and model.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
        after = model(batch)["logits"]
        model.set_channels_last(False)
        assert model.backbone.conv_stem.weight.is_contiguous()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def apply_demo(name):
    from utils.config import apply_overrides, load_config

    return apply_overrides(load_config(name), demo_overrides(name))


# --- scripts/bench_recording.py ------------------------------------------------------------------------
def test_benchmark_prints_the_rows_it_claims(capsys, monkeypatch):
    """Every family at the demo's size: one row per applicable path (no channels_last for the 1D cfg_2a), no_grad
    giving float32's numbers exactly, one 'auto' row per config within the tolerance, and the hour's estimate
    over the sweep's 144 runs and 9 configs from the timed figures."""
    monkeypatch.setattr(fast_path, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    results = bench_recording.main(["--demo-size", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert re.search(r"^CPU: .+, \d+ torch threads, bfloat16 instructions: avx512_bf16;", out, re.M)
    assert re.search(r"^load average \(1, 5, 15 min\) at start: [\d.]+ [\d.]+ [\d.]+$", out, re.M)
    rows = [ln.split("|")[1:-1] for ln in out.splitlines() if re.match(r"\| cfg_\w+ \| mdl_", ln)]
    paths_2d = ["fp32", "fp32+no_grad", "fp32+cl", "bf16", "bf16+cl"]
    expected = {"cfg_1": paths_2d, "cfg_2a": ["fp32", "fp32+no_grad", "bf16"], "cfg_3": paths_2d, "cfg_5a": paths_2d}
    assert [(r[0].strip(), r[3].strip()) for r in rows] == [(c, p) for c, ps in expected.items() for p in ps]
    for r in rows:
        diff = r[6].strip()
        assert diff == "(reference)" if r[3].strip() == "fp32" else float(diff) >= 0
        if r[3].strip() == "fp32+no_grad":
            assert float(diff) == 0.0
        if r[7].strip() == "auto":
            assert r[3].strip() != "fp32+no_grad" and (diff == "(reference)" or float(diff) <= fast_path.TOLERANCE)
    assert sorted(r[0].strip() for r in rows if r[7].strip() == "auto") == sorted(expected)
    n = len(timeline.window_starts(3600 * FS, 10.0))
    assert f"at stride 10 s: {n} windows" in out
    hour = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in out.splitlines()
            if re.match(r"\| cfg_\w+ \| (timed|=|~)", ln)}
    assert list(hour) == CONFIGS and hour["cfg_2b"][0].strip() == "= cfg_2a" and hour["cfg_5d"][0].strip() == "~ cfg_5a"
    for name, res in results.items():
        assert float(hour[name][2]) == pytest.approx(n / res.by_name("fp32").windows_per_s, rel=0.01)
    assert re.search(r"^\| full ensemble \| 144 \|", out, re.M) and re.search(r"^\| one run per config \| 9 \|", out, re.M)

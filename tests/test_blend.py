"""The blend (docs/solution.md §9): recovers known weights, lowers the KL, aligns seeds/folds by id, names what is missing."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.signal import LABEL_COLS, LOGIT_COLS
from inference import blend
from utils import checkpoint as ckpt
from utils.io import DataError
from utils.metric import kl_from_logits, softmax

ROOT = Path(__file__).resolve().parents[1]


def write_runs(root: Path, X: np.ndarray, y: np.ndarray, configs, seeds=(1,), noise=0.0, skip=()):
    """Golden file with targets y and run folders holding X[:, :, i] for configs[i] (per fold, per seed)."""
    n = len(y)
    golden = pd.DataFrame({"label_id": np.arange(n) + 100, "eeg_id": np.arange(n) + 10_000, "fold": np.arange(n) % 4})
    golden[LABEL_COLS] = y
    (root / "data").mkdir(parents=True, exist_ok=True)
    golden.to_csv(root / "data" / blend.GOLDEN_FILE, index=False)
    for i, cfg in enumerate(configs):
        for f in range(4):
            if (cfg, f) in skip:
                continue
            sel = (golden["fold"] == f).to_numpy()
            for k, seed in enumerate(seeds):
                d = root / "out" / cfg / f"fold{f}" / f"seed{seed}"
                d.mkdir(parents=True, exist_ok=True)
                df = golden.loc[sel, ["eeg_id", "label_id"]].iloc[::-1].copy()  # order differs from golden
                # seeds differ by +-noise so that their mean is exactly X
                df[LOGIT_COLS] = X[sel][::-1, :, i] + noise * (1 if k % 2 == 0 else -1) * (len(seeds) > 1)
                df.to_csv(d / "val_logits.csv", index=False)
                ckpt.save({"model": {}, "seed": seed}, d / ckpt.CHECKPOINT_FILE)  # a finished run (the rule's only mark)
    return golden


def known_problem(n=2400, m=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1.5, (n, 6, m))
    w_true = np.array([0.55, 0.3, 0.15])[:m]
    c_true = np.array([0.3, -0.2, 0.1, 0.0, -0.4, 0.2])
    return X, softmax(X @ w_true + c_true), w_true, c_true


def test_fit_recovers_known_weights_and_bias():
    X, y, w_true, c_true = known_problem(n=4000)  # 3 batches of 1024 per epoch and split
    fit = blend.fit_blend(X, y, epochs=400)
    np.testing.assert_allclose(fit["w"], w_true, atol=0.02)
    # softmax ignores a common shift of the bias: compare centred
    np.testing.assert_allclose(fit["c"] - fit["c"].mean(), c_true - c_true.mean(), atol=0.02)
    assert fit["w_splits"].shape == (5, 3) and fit["oof_logits"].shape == (len(y), 6)
    start_kl = kl_from_logits(y, X.mean(axis=2))  # the fit starts at w = 1/M, c = 0
    assert kl_from_logits(y, fit["oof_logits"]) < 0.05 * start_kl


def separate_fits(X, y, epochs, batch_size, lr=0.1):
    """The plain recipe, one optimiser per KFold split, consuming the RNG like fit_blend does."""
    import torch
    import torch.nn.functional as F
    from sklearn.model_selection import KFold

    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    splits = [torch.from_numpy(tr) for tr, _ in KFold(5, shuffle=True, random_state=1).split(X)]
    params = [(torch.full((X.shape[2],), 1 / X.shape[2], requires_grad=True), torch.zeros(6, requires_grad=True))
              for _ in splits]
    opts = [torch.optim.SGD(list(p), lr=lr) for p in params]
    scheds = [torch.optim.lr_scheduler.StepLR(o, 10, 0.95) for o in opts]
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perms = [tr[torch.randperm(len(tr), generator=gen)] for tr in splits]
        for perm, (w, c), opt in zip(perms, params, opts):
            for b in range(len(perm) // batch_size):  # drop_last
                idx = perm[b * batch_size:(b + 1) * batch_size]
                opt.zero_grad()
                F.kl_div(F.log_softmax(Xt[idx] @ w + c, 1), yt[idx], reduction="batchmean").backward()
                opt.step()
        for s in scheds:
            s.step()
    return np.stack([w.detach().numpy() for w, _ in params]), np.stack([c.detach().numpy() for _, c in params])


@pytest.mark.parametrize("n, batch", [(1500, 256), (1281, 205)])  # even batch counts; uneven (4 vs 5)
def test_batched_splits_equal_separate_fits(n, batch):
    """The 5 splits are fitted together; the numbers must be those of 5 separate SGD fits."""
    X, y, _, _ = known_problem(n=n)
    fit = blend.fit_blend(X, y, epochs=25, batch_size=batch)
    w_ref, c_ref = separate_fits(X, y, 25, batch)
    np.testing.assert_allclose(fit["w_splits"], w_ref, atol=2e-5)
    np.testing.assert_allclose(fit["c_splits"], c_ref, atol=2e-5)


def test_small_data_uses_full_batch():
    X, y, w_true, _ = known_problem(n=60)
    fit = blend.fit_blend(X, y, epochs=200)  # 48 training rows < 1024: one full batch per epoch
    assert np.abs(fit["w"] - 1 / 3).max() > 0.05  # it moved away from the init
    assert kl_from_logits(y, fit["oof_logits"]) < kl_from_logits(y, X.mean(axis=2))


def test_script_averages_seeds_aligns_ids_and_saves(tmp_path):
    X, y, w_true, _ = known_problem(n=1200)
    configs = ["cfg_2a", "cfg_5a", "cfg_1"]
    write_runs(tmp_path, X, y, configs, seeds=(3, 11), noise=0.5)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "blend_weights.py"), "--data-dir",
                           str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"), "--configs", *configs,
                           "--epochs", "150"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "# Model weights" in proc.stdout and "# Class bias term for the 6 classes" in proc.stdout
    saved = json.loads((tmp_path / "out" / blend.BLEND_FILE).read_text())
    assert list(saved["weights"]) == configs and len(saved["bias"]) == 6
    # seed mean == X exactly, so each config's OOF KL is that of X's column
    for i, cfg in enumerate(configs):
        assert saved["oof_kl"][cfg] == pytest.approx(kl_from_logits(y, X[:, :, i]), rel=1e-6)
    assert saved["blend_oof_kl"] < min(saved["oof_kl"].values())
    assert saved["prior_kl"] > saved["blend_oof_kl"]
    assert (tmp_path / "out" / "blend_weights_kl.png").stat().st_size > 5000
    assert blend.load_blend(tmp_path / "out" / blend.BLEND_FILE)["weights"]["cfg_5a"] == saved["weights"]["cfg_5a"]


def test_first_seed_only_takes_one_seed(tmp_path):
    X, y, _, _ = known_problem(n=400)
    write_runs(tmp_path, X, y, ["cfg_3"], seeds=(7, 42), noise=0.5)
    mean = blend.load_oof_stack(tmp_path / "out", tmp_path / "data", ["cfg_3"])
    first = blend.load_oof_stack(tmp_path / "out", tmp_path / "data", ["cfg_3"], first_seed_only=True)
    np.testing.assert_allclose(mean.X[:, :, 0], X[:, :, 0], atol=1e-9)
    np.testing.assert_allclose(first.X[:, :, 0], X[:, :, 0] + 0.5, atol=1e-9)  # seed7 (the lowest) got +noise
    assert mean.n_runs == {"cfg_3": 8} and first.n_runs == {"cfg_3": 4}


def test_missing_configs_and_folds_are_named(tmp_path):
    X, y, _, _ = known_problem(n=400, m=2)
    golden = write_runs(tmp_path, X, y, ["cfg_1", "cfg_4"], skip={("cfg_4", 3)})
    stack = blend.load_oof_stack(tmp_path / "out", tmp_path / "data", ["cfg_1", "cfg_4", "cfg_5d"])
    assert stack.configs == ["cfg_1", "cfg_4"]
    text = "\n".join(stack.notes)
    assert "cfg_5d: no finished runs" in text and "cfg_4: fold(s) 3 missing" in text
    assert len(stack.y) == int((golden["fold"] != 3).sum())  # rows covered by every used config
    ids = golden.set_index("label_id")
    np.testing.assert_allclose(stack.y, ids.loc[stack.label_ids, LABEL_COLS].to_numpy(), atol=1e-12)


def test_no_runs_or_no_golden_file_is_a_clear_error(tmp_path):
    X, y, _, _ = known_problem(n=100, m=1)
    write_runs(tmp_path, X, y, ["cfg_1"])
    with pytest.raises(DataError, match="no validation logits"):
        blend.load_oof_stack(tmp_path / "out", tmp_path / "data", ["cfg_2b"])
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "blend_weights.py"), "--data-dir",
                           str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "train_folded_6k6.csv: golden validation file not found" in proc.stderr
    with pytest.raises(DataError, match="blend file not found"):
        blend.load_blend(tmp_path / "out" / "none.json")


def test_only_finished_runs_are_blended_and_unfinished_logits_are_named(tmp_path):
    X, y, _, _ = known_problem(n=400)
    write_runs(tmp_path, X, y, ["cfg_2a"], seeds=(1,))
    # an unfinished seed with logits (killed between logits and checkpoint) and one with a cut-off checkpoint
    for seed, ck in ((2, None), (3, b"")):
        d = tmp_path / "out" / "cfg_2a" / "fold0" / f"seed{seed}"
        d.mkdir(parents=True)
        pd.read_csv(tmp_path / "out" / "cfg_2a" / "fold0" / "seed1" / "val_logits.csv").assign(
            **{c: 99.0 for c in LOGIT_COLS}).to_csv(d / "val_logits.csv", index=False)
        if ck is not None:
            (d / ckpt.CHECKPOINT_FILE).write_bytes(ck)
    stack = blend.load_oof_stack(tmp_path / "out", tmp_path / "data", ["cfg_2a"])
    assert stack.X.max() < 99  # the unfinished runs' logits are not averaged in
    assert stack.n_runs["cfg_2a"] == 4  # one finished seed per fold
    assert any("seed2" in n and "missing" in n for n in stack.notes)
    assert any("seed3" in n and "zero-length" in n for n in stack.notes)


def test_rows_validated_in_two_folds_are_refused(tmp_path):
    X, y, _, _ = known_problem(n=400)
    write_runs(tmp_path, X, y, ["cfg_2a"])
    f0 = tmp_path / "out" / "cfg_2a" / "fold0" / "seed1" / "val_logits.csv"
    f1 = tmp_path / "out" / "cfg_2a" / "fold1" / "seed1" / "val_logits.csv"
    pd.concat([pd.read_csv(f1), pd.read_csv(f0).head(3)]).to_csv(f1, index=False)  # 3 rows leak into fold 1
    with pytest.raises(DataError, match="3 validation row.*more than one fold"):
        blend.load_oof_stack(tmp_path / "out", tmp_path / "data", ["cfg_2a"])

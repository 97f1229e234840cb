"""The metric against scipy's rel_entr, its clipping, and score()'s input checks."""
import numpy as np
import pandas as pd
import pytest
from scipy.special import rel_entr

from data.signal import LABEL_COLS
from utils.io import DataError
from data.synthetic import oracle_kl
from utils.metric import MetricError, kl_divergence, kl_from_logits, prior_kl, score, softmax


def rand_probs(rng, n):
    return rng.dirichlet(np.ones(6), n)


def test_kl_matches_rel_entr_with_zero_targets():
    rng = np.random.default_rng(0)
    y = rand_probs(rng, 50)
    y[::3, 2] = 0.0
    y /= y.sum(1, keepdims=True)
    p = rand_probs(rng, 50)
    assert kl_divergence(y, p) == pytest.approx(rel_entr(y, p).sum(1).mean(), rel=1e-12)


def test_prediction_clipped_not_renormalised():
    y = np.array([[0.5, 0.5, 0, 0, 0, 0]])
    p = np.array([[1.0, 0.0, 0, 0, 0, 0]])  # p=1 -> 1-1e-15, p=0 -> 1e-15
    expected = 0.5 * np.log(0.5 / (1 - 1e-15)) + 0.5 * np.log(0.5 / 1e-15)
    assert kl_divergence(y, p) == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(kl_divergence(y, p))


def test_kl_from_logits_and_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 6)) * 3
    y = rand_probs(rng, 7)
    assert kl_from_logits(y, logits) == pytest.approx(rel_entr(y, softmax(logits)).sum(1).mean())
    assert np.allclose(softmax(logits).sum(1), 1)


def frames(rng, n=6):
    ids = np.arange(100, 100 + n)
    votes = rng.integers(0, 5, (n, 6))
    votes[:, 0] += 1
    sol = pd.DataFrame(votes, columns=LABEL_COLS)
    sol.insert(0, "eeg_id", ids)
    sub = pd.DataFrame(rand_probs(rng, n), columns=LABEL_COLS)
    sub.insert(0, "eeg_id", ids)
    return sol, sub


def test_score_matches_by_id_not_position():
    sol, sub = frames(np.random.default_rng(2))
    expected = rel_entr(sol[LABEL_COLS].to_numpy() / sol[LABEL_COLS].to_numpy().sum(1, keepdims=True),
                        sub[LABEL_COLS].to_numpy()).sum(1).mean()
    shuffled = sub.sample(frac=1, random_state=0)
    assert score(sol, shuffled) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("case, message", [("sum", "do not sum to 1"), ("column", "missing column"),
                                           ("ids", "ids differ"), ("dup", "duplicated")])
def test_score_errors(case, message):
    sol, sub = frames(np.random.default_rng(3))
    if case == "sum":
        sub.loc[0, "lpd_vote"] += 0.1
    elif case == "column":
        sub = sub.drop(columns="grda_vote")
    elif case == "ids":
        sub.loc[0, "eeg_id"] = 1
    else:
        sub = pd.concat([sub, sub.iloc[:1]])
    with pytest.raises(MetricError, match=message) as err:
        score(sol, sub)
    assert "\n" not in str(err.value)


def test_prior_kl():
    rng = np.random.default_rng(4)
    tr, va = rand_probs(rng, 20), rand_probs(rng, 9)
    prior = tr.mean(0)
    assert prior_kl(tr, va) == pytest.approx(rel_entr(va, prior[None]).sum(1).mean())


def test_oracle_kl(tmp_path):
    rng = np.random.default_rng(5)
    rows = pd.DataFrame(rng.integers(0, 6, (5, 6)) + 1, columns=LABEL_COLS)
    rows.insert(0, "label_id", [11, 12, 13, 14, 15])
    assert oracle_kl(rows, tmp_path) is None  # not synthetic data
    latent = pd.DataFrame(rand_probs(rng, 6), columns=LABEL_COLS)
    latent.insert(0, "eeg_id", 1)
    latent.insert(0, "label_id", [15, 14, 13, 12, 11, 99])
    latent.to_csv(tmp_path / "synthetic_latent.csv", index=False)
    y = rows[LABEL_COLS].to_numpy() / rows[LABEL_COLS].to_numpy().sum(1, keepdims=True)
    p = latent.set_index("label_id").loc[rows["label_id"], LABEL_COLS].to_numpy()
    assert oracle_kl(rows, tmp_path) == pytest.approx(rel_entr(y, p).sum(1).mean())
    rows.loc[0, "label_id"] = 77
    with pytest.raises(DataError, match="synthetic_latent.csv: 1 row"):
        oracle_kl(rows, tmp_path)

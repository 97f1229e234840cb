"""Row selection (docs/solution.md §4) on hand-built tables whose answers are derived by hand in the comments."""
import time

import numpy as np
import pandas as pd

from data.selection import TRAINING_SETS, overlap_scores, select_rows, write_training_sets
from data.signal import LABEL_COLS


def table(rows):
    """rows: (eeg_id, spectrogram offset, votes) -> a train_folded-like frame; label_id = position."""
    out = []
    for i, (eeg, off, votes) in enumerate(rows):
        out.append(dict(eeg_id=eeg, spectrogram_label_offset_seconds=float(off), label_id=i, fold=eeg % 4,
                        **dict(zip(LABEL_COLS, votes))))
    return pd.DataFrame(out)


V9 = (0, 3, 0, 0, 0, 6)  # 9 votes
V9B = (9, 0, 0, 0, 0, 0)
V8 = (0, 0, 0, 0, 2, 6)  # 8 votes: dropped at filter_ct 8


def test_overlap_rule_keeps_most_central_window():
    # offsets 0, 500, 100: overlaps 600+100+500=1200, 100+600+200=900, 500+200+600=1300 -> row 2
    df = table([(1, 0, V9), (1, 500, V9), (1, 100, V9)])
    assert list(overlap_scores(np.zeros(3), [0, 500, 100])) == [1200, 900, 1300]
    assert list(select_rows(df, 8, False)["label_id"]) == [2]


def test_ties_keep_first_row():
    # offsets 100, 0: both 600 + 500 = 1100 -> the first row (label 0)
    df = table([(1, 100, V9), (1, 0, V9), (1, 2000, V9B)])
    assert list(select_rows(df, 8, False)["label_id"]) == [0, 2]
    # windows 600 s or more apart do not overlap: each scores 600, first wins
    df = table([(1, 700, V9), (1, 0, V9)])
    assert list(select_rows(df, 8, False)["label_id"]) == [0]


def test_filter_ct_boundary_is_strict():
    df = table([(1, 0, V8), (2, 0, V9), (3, 0, (1, 0, 0, 0, 0, 0))])
    assert list(select_rows(df, 8, False)["label_id"]) == [1]  # sum 8 is not > 8
    assert list(select_rows(df, 0, False)["label_id"]) == [0, 1, 2]
    assert list(select_rows(df, 7, False)["label_id"]) == [0, 1]


def test_group_order_and_one_per_eeg():
    # groups by first appearance: (5,V9) rows 0,3 ; (7,V9) row 1 ; (5,V9B) rows 2,4
    df = table([(5, 0, V9), (7, 0, V9), (5, 300, V9B), (5, 900, V9), (5, 330, V9B)])
    kept = select_rows(df, 8, False)
    # (5,V9): 0 and 900 do not overlap -> tie -> row 0; (5,V9B): tie 600+570 each -> row 2
    assert list(kept["label_id"]) == [0, 1, 2]
    one = select_rows(df, 8, True)
    assert list(one["label_id"]) == [0, 1]  # eeg 5 keeps its first group's row only
    assert list(one.columns) == list(df.columns)


def test_one_per_eeg_uses_first_group_after_filtering():
    # eeg 5's first group has 8 votes: filtered out, so its second group represents it
    df = table([(5, 0, V8), (5, 50, V9), (5, 60, V9B)])
    assert list(select_rows(df, 8, True)["label_id"]) == [1]
    assert list(select_rows(df, 0, True)["label_id"]) == [0]


def bin_count_overlap(offsets):
    """docs/solution.md's definition, literally: count coverage per one-second bin, sum over a row's bins."""
    offsets = np.asarray(offsets)
    cover = np.zeros(offsets.max() + 600, dtype=np.int64)
    for o in offsets:
        cover[o:o + 600] += 1
    return np.array([cover[o:o + 600].sum() for o in offsets])


def test_overlap_formula_equals_bin_counting():
    rng = np.random.default_rng(0)
    groups, offsets, expected = [], [], []
    for g in range(30):
        offs = rng.integers(0, 1500, rng.integers(1, 12))
        if g % 5 == 0:
            offs[-1] = offs[0]  # duplicated offsets count twice
        groups += [g] * len(offs)
        offsets += list(offs)
        expected += list(bin_count_overlap(offs))
    perm = rng.permutation(len(groups))  # input order must not matter
    got = overlap_scores(np.array(groups)[perm], np.array(offsets)[perm])
    assert np.array_equal(got, np.array(expected)[perm])


def test_write_training_sets(tmp_path):
    df = table([(1, 0, V9), (1, 10, V9), (2, 0, V8), (2, 4, V9B), (3, 0, (1, 0, 0, 0, 0, 0))])
    df.to_csv(tmp_path / "train_folded.csv", index=False)
    counts = write_training_sets(tmp_path)
    assert counts == {"train_folded_6k6.csv": 2, "train_folded_6k6c.csv": 2, "train_folded_6k6c_1up.csv": 4}
    for name in TRAINING_SETS:
        out = pd.read_csv(tmp_path / name)
        assert len(out) == counts[name] and "fold" in out.columns


def real_sized_table(rng, n_eegs=17_089, n_rows=106_800):
    """Rows per eeg heavy-tailed like the real train.csv; mostly shared votes per eeg; even offsets."""
    sizes = rng.geometric(1 / 6.25, n_eegs)
    sizes = np.maximum(1, np.round(sizes * n_rows / sizes.sum())).astype(int)
    eeg = np.repeat(np.arange(n_eegs), sizes)
    n = len(eeg)
    votes = rng.integers(0, 4, (n_eegs, 6))[eeg]
    change = rng.random(n) < 0.1
    votes[change] = rng.integers(0, 4, (change.sum(), 6))
    offsets = (2 * rng.integers(0, 1500, n)).astype(float)
    df = pd.DataFrame(votes, columns=LABEL_COLS)
    df.insert(0, "spectrogram_label_offset_seconds", offsets)
    df.insert(0, "eeg_id", eeg + 10**9)
    return df


def test_real_size_is_fast():
    df = real_sized_table(np.random.default_rng(0))
    t0 = time.time()
    out = {k: len(select_rows(df, ct, one)) for k, (ct, one) in TRAINING_SETS.items()}
    took = time.time() - t0
    print(f"select_rows on {len(df)} rows, three selections: {took:.2f} s {out}")
    assert took < 30
    assert out["train_folded_6k6.csv"] <= out["train_folded_6k6c.csv"] <= out["train_folded_6k6c_1up.csv"]

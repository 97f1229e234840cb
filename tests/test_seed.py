"""utils/seed.py: the row-order, item and rank streams never coincide."""
import itertools

import numpy as np

from utils import seed as seeds

GRID = list(itertools.product((0, 1, 7, 1001), range(4)))


def first_words() -> dict:
    """Each stream's first SeedSequence state word: order(seed, e), item(seed, e, r), rank(seed, k)."""
    words = {}
    for s, e in GRID:
        words[("order", s, e)] = int(seeds.order_rng(s, e).bit_generator.seed_seq.generate_state(1, np.uint32)[0])
        words[("rank", s, e)] = seeds.rank_seed(s, e)
        for r in range(4):
            words[("item", s, e, r)] = int(seeds.item_rng(s, e, r).bit_generator.seed_seq.generate_state(1, np.uint32)[0])
    return words


def test_no_two_streams_coincide_over_a_grid():
    """SeedSequence pads entropy with zeros: without a word naming the kind, order [seed, e] and row 0's
    items [seed, e, 0] were one stream, and rank [seed, k] began as order [seed, e] for k = e."""
    words = first_words()
    assert len(set(words.values())) == len(words)


def test_the_row_order_is_not_row_0s_augmentation_stream():
    for s, e in GRID:
        assert not np.array_equal(seeds.epoch_order(100, s, e), seeds.item_rng(s, e, 0).permutation(100))
        assert np.array_equal(np.sort(seeds.epoch_order(100, s, e)), np.arange(100))


def test_streams_depend_only_on_their_words():
    a = seeds.item_rng(7, 2, 5).random(3)
    assert np.array_equal(a, seeds.item_rng(7, 2, 5).random(3))
    assert not np.array_equal(a, seeds.item_rng(7, 2, 6).random(3))
    assert np.array_equal(seeds.epoch_order(50, 7, 1), seeds.epoch_order(50, 7, 1))

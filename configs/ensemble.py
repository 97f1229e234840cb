"""The reproduction's ensemble as plain values (docs/solution.md §§8-9): which configs, which seeds on
which folds, which folds the blend reads, and the blend file's name. The sweep, the blend, inference
and the demo read them from here."""

CONFIGS = ["cfg_1", "cfg_2a", "cfg_2b", "cfg_3", "cfg_4", "cfg_5a", "cfg_5b", "cfg_5c", "cfg_5d"]
# folds 0-3 with two seeds each, and eight full fits on all rows (fold -1): 9 x 16 = 144 runs
FOLD_SEEDS = {0: (1001, 1002), 1: (1001, 1002), 2: (1001, 1002), 3: (1001, 1002), -1: tuple(range(2001, 2009))}
BLEND_FOLDS = (0, 1, 2, 3)  # the out-of-fold logits the blend is fitted on
BLEND_FILE = "blend_weights.json"  # <output_dir>/blend_weights.json: weights and class bias

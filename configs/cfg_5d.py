"""cfg_5d (docs/solution.md §7): cfg_5a with the zoom mel at win 8 / hop 2; batch 8 with 4 accumulation steps."""
import copy

from configs.cfg_5a import cfg as parent

cfg = copy.deepcopy(parent)
cfg.name = "cfg_5d"
cfg.spec_args_center = dict(parent.spec_args_center, win_length=8, hop_length=2)
cfg.batch_size = 8
cfg.grad_accumulation = 4

"""cfg_5b (docs/solution.md §7): cfg_5a with drop_rate 0.3."""
import copy

from configs.cfg_5a import cfg as parent

cfg = copy.deepcopy(parent)
cfg.name = "cfg_5b"
cfg.drop_rate = 0.3

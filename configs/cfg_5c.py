"""cfg_5c (docs/solution.md §7): cfg_5a with channel-dropout probability 0.7."""
import copy

from configs.cfg_5a import cfg as parent

cfg = copy.deepcopy(parent)
cfg.name = "cfg_5c"
cfg.channel_dropout_p = 0.7

"""cfg_2b: cfg_2a with a second-order band-pass."""
import copy

from configs.cfg_2a import cfg as cfg_2a

cfg = copy.deepcopy(cfg_2a)
cfg.name = "cfg_2b"
cfg.butter_order = 2

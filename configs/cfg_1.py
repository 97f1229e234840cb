"""cfg_1 (docs/solution.md §7): mdl_1, 16 mels stacked vertically into a 1-channel image for mixnet_xl; no AMP."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_1"
cfg.model = "mdl_1"
cfg.dataset = "ds_1a"
cfg.in_chans = 1
cfg.batch_size = 8
cfg.grad_accumulation = 4
cfg.mixed_precision = False
# mel: (16, 128, 257) per sample
cfg.spec_args = dict(sample_rate=200, n_fft=1024, win_length=128, hop_length=39, n_mels=128,
                     f_min=0.53, f_max=40.0)

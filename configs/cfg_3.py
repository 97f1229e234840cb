"""cfg_3 (docs/solution.md §7): mdl_3, three views per channel, left channels first, mixnet_l with a fresh stem."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_3"
cfg.model = "mdl_3"
cfg.dataset = "ds_1a"
cfg.backbone = "mixnet_l"
cfg.batch_size = 32
# mel: (16, 64, 313) per sample
cfg.spec_args = dict(sample_rate=200, n_fft=512, win_length=128, hop_length=32, n_mels=64,
                     f_min=0.53, f_max=30.0)

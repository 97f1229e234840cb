"""cfg_5a (docs/solution.md §7): mdl_4 on ds_1 (center jitter), zoom 2400 samples at win 16 / hop 4 -> image width 852."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_5a"
cfg.model = "mdl_4"
cfg.dataset = "ds_1"
cfg.epochs = 16
cfg.grad_accumulation = 2
cfg.center_jitter_p = 0.7  # +-enlarge_len/3
cfg.spec_args = dict(sample_rate=200, n_fft=512, win_length=128, hop_length=32, n_mels=64,
                     f_min=0.53, f_max=30.0)
cfg.enlarge_len = 2400
cfg.spec_args_center = dict(sample_rate=200, n_fft=2048, win_length=16, hop_length=4, n_mels=64,
                            f_min=0.53, f_max=30.0)
cfg.cut_from_large_mel = 0.2
cfg.top_db = 100.0

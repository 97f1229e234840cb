"""cfg_4 (docs/solution.md §7): mdl_4, zoom of 2800 samples (n_fft 2048, win 32, hop 8) spliced into the main mel."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_4"
cfg.model = "mdl_4"
cfg.dataset = "ds_1a"
cfg.grad_accumulation = 2
# main mel (16, 64, 313); 62 of its columns around the label centre give way to the zoom (351 frames)
cfg.spec_args = dict(sample_rate=200, n_fft=512, win_length=128, hop_length=32, n_mels=64,
                     f_min=0.53, f_max=30.0)
cfg.enlarge_len = 2800
cfg.spec_args_center = dict(sample_rate=200, n_fft=2048, win_length=32, hop_length=8, n_mels=64,
                            f_min=0.53, f_max=30.0)
cfg.cut_from_large_mel = 0.2  # b = floor(313 * 0.2) // 2 = 31 columns either side
cfg.top_db = 100.0

"""cfg_1 (SPEC 7): mdl_1, 16 mels stacked vertically into a 1-channel image for mixnet_xl; no AMP."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_1"
cfg.model = "mdl_1"
cfg.dataset = "ds_1a"
cfg.train_df = "train_folded_6k6c.csv"
cfg.backbone = "mixnet_xl"
cfg.in_chans = 1
cfg.epochs = 12
cfg.lr = 1.2e-3
cfg.batch_size = 8
cfg.grad_accumulation = 4
cfg.clip_grad = 20.0
cfg.mixed_precision = False
cfg.drop_rate = 0.2
cfg.drop_path_rate = 0.2
cfg.channel_dropout_p = 0.5
cfg.channel_dropout_max = 8
cfg.center_jitter_p = 0.0
# mel: (16, 128, 257) per sample
cfg.spec_args = dict(sample_rate=200, n_fft=1024, win_length=128, hop_length=39, n_mels=128,
                     f_min=0.53, f_max=40.0)
cfg.top_db = None

"""cfg_3 (SPEC 7): mdl_3, three views per channel, left channels first, mixnet_l with a fresh stem."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_3"
cfg.model = "mdl_3"
cfg.dataset = "ds_1a"
cfg.train_df = "train_folded_6k6c.csv"
cfg.backbone = "mixnet_l"
cfg.in_chans = 3
cfg.epochs = 12
cfg.lr = 1.2e-3
cfg.batch_size = 32
cfg.grad_accumulation = 1
cfg.clip_grad = 20.0
cfg.mixed_precision = True
cfg.drop_rate = 0.2
cfg.drop_path_rate = 0.2
cfg.channel_dropout_p = 0.5
cfg.channel_dropout_max = 8
cfg.center_jitter_p = 0.0
# mel: (16, 64, 313) per sample
cfg.spec_args = dict(sample_rate=200, n_fft=512, win_length=128, hop_length=32, n_mels=64,
                     f_min=0.53, f_max=30.0)
cfg.top_db = None

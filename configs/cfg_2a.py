"""cfg_2a: raw-EEG model mdl_2 on ds_2 with the vote-count curriculum, butter_order 1
(docs/solution.md §§5-7)."""
import copy

from configs.default_config import basic_cfg

cfg = copy.deepcopy(basic_cfg)
cfg.name = "cfg_2a"
cfg.dataset = "ds_2"
cfg.model = "mdl_2"
cfg.train_df = "train_folded_6k6c_1up.csv"

# ds_2 preprocessing and augmentation
cfg.butter_order = 1  # 0 would skip the main band-pass; band augmentation uses max(order, 1)
cfg.butter_low = 1.6
cfg.butter_high = 30.0
cfg.time_reverse_p = 0.5
cfg.flip_p = 0.5  # hemisphere swap: even <-> odd bipolar channels
cfg.band_aug_p = 0.2
cfg.band_aug_max_channels = 8
cfg.band_aug_low = [1.6, 2.0]  # uniform in [lo, hi)
cfg.band_aug_high = [10, 30]  # integer in [lo, hi)

# vote-count curriculum: a row takes the last range whose lower vote bound it reaches,
# i.e. [0, 2], [3, 8], [8, inf) with 8 votes in the last; all but the last weight decay with the epoch
cfg.curriculum_min_votes = [0, 3, 8]
cfg.curriculum_weights = [0.3, 0.5, 1.0]
cfg.curriculum_decay = 1.2  # weight * (1 - decay * epoch / epochs) ...
cfg.curriculum_floor = 0.02  # ... floored here
# the weights move every epoch: ds_2.prepare_batch sets them in the training step (no loader rebuild)

# mdl_2
cfg.backbone = None
cfg.pretrained = False
cfg.frontend_filters = 64
cfg.sq_dim = 128
cfg.sq_heads = 4
cfg.sq_layers = 3
cfg.sq_conv_kernel = 51
cfg.sq_ff_expansion = 1
cfg.sq_dropout = 0.2  # feed-forward and conv modules: the 15 dropouts the reference applies
# The reference's config also names these two, but its encoder never applies them; they act only
# with extra_dropouts = True (input: on the sequence after the row GeM; attention: on its probabilities).
cfg.extra_dropouts = False
cfg.input_dropout = 0.1
cfg.attn_dropout = 0.2
cfg.rotary_base = 10000.0
cfg.rotary_max_len = 625
cfg.rotary_trainable = True  # reference quirk: +40,000 trainable parameters
cfg.channel_dropout_p = 0.5
cfg.channel_dropout_max = 8

# optimisation
cfg.epochs = 30
cfg.lr = 1e-3
cfg.batch_size = 64
cfg.grad_accumulation = 3
cfg.clip_grad = 4.0
cfg.mixed_precision = True
cfg.eval_epochs = 2

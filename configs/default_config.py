"""Values shared by every config; a config module deep-copies `basic_cfg` and states what differs.

Field names here are the contract between configs, datasets (data/ds_*.py), models (models/mdl_*.py)
and train.py; docs/solution.md §7 gives the values.
"""
from types import SimpleNamespace

cfg = SimpleNamespace()
RUN_ONLY_KEYS: set = set()  # fields that change how a run trains or logs, never what a trained run predicts


def run_only(**fields) -> None:
    """Set fields that never change a trained run's test-time inputs or outputs (inference shares one pass
    over the data among runs that differ only in these: inference/ensemble.py)."""
    vars(cfg).update(fields)
    RUN_ONLY_KEYS.update(fields)


# --- identity and files -------------------------------------------------------------------------
cfg.name = "default_config"  # set to the module name by each config
cfg.dataset = "ds_1"  # module in data/
cfg.model = "mdl_1"  # module in models/
cfg.data_dir = "datamount"  # everything below is relative to it unless absolute
cfg.train_df = "train_folded_6k6c.csv"  # rows to train on (filtered by fold)
cfg.val_df = "train_folded_6k6.csv"  # golden validation rows
cfg.train_eeg_dir = "train_eegs"
cfg.test_eeg_dir = "test_eegs"
cfg.cache_dir = None  # decoded-recording cache; None -> <data_dir>/cache/eeg_npy
run_only(
    output_dir="output",  # runs go to <output_dir>/<name>/fold<fold>/seed<seed>/
    fold=0,  # -1: train on all rows (validation still shown on fold 0)
    seed=-1,  # -1: draw a random seed (and record it)
)

# --- labels ---------------------------------------------------------------------------------------
cfg.label_cols = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
cfg.n_classes = 6

# --- signal window and preprocessing (docs/solution.md §5) ---------------------------------
cfg.sample_rate = 200
cfg.window_len = 10_000  # 50 s
cfg.shift_max = 3333  # training-time window shift, samples either side
cfg.clip_value = 1024.0
cfg.scale = 32.0
cfg.butter_low = 0.5
cfg.butter_high = 20.0
cfg.butter_order = 2
cfg.flip_p = 0.5  # left/right swap
cfg.band_aug_p = 0.2
cfg.band_aug_max_channels = 8
cfg.band_aug_low = [0.0001, 2.0]  # low cut uniform in [lo, hi)
cfg.band_aug_high = [10, 20]  # high cut an integer in [lo, hi)
cfg.center_jitter_p = 0.0  # ds_1 only: 0.7

# --- model ----------------------------------------------------------------------------------------
cfg.backbone = "mixnet_xl"  # the 2D configs' values below; mdl_2 ignores them
run_only(
    pretrained=True,  # a trained run's checkpoint holds every weight
    pretrained_weights=None,  # path to a local timm state dict; used instead of a download
)
cfg.in_chans = 3
cfg.drop_rate = 0.2
cfg.drop_path_rate = 0.2
cfg.pool = "gem"
cfg.gem_p_init = 3.0
cfg.channel_dropout_p = 0.5
cfg.channel_dropout_max = 8
cfg.spec_args = None  # torchaudio MelSpectrogram arguments of the 2D models (set per config)
cfg.top_db = None  # dB floor below the batch-wide max (mdl_4: 100)

# --- speed switches (off = the reference's behaviour; engine/build.py) ------------------------------
run_only(
    channels_last=False,  # 2D models: backbone weights and input image in channels_last memory format
    compile=False,  # torch.compile the whole model's forward in place (state dict keys unchanged)
)

# --- optimisation (docs/solution.md §7) ----------------------------------------------------
run_only(
    optimizer="Adam",
    weight_decay=0.0,
    schedule="cosine",  # cosine decay to 0, no warm-up, stepped every iteration
    epochs=12,
    lr=1.2e-3,
    batch_size=16,
    batch_size_val=None,  # None -> batch_size
    grad_accumulation=1,
    clip_grad=20.0,
    mixed_precision=True,  # used on CUDA; on CPU only with --cpu_amp True (bfloat16)
    cpu_amp=False,
    amp_dtype=None,  # "float16" / "bfloat16" / "float32" on any device; None: from the two above (engine/precision.py)
    eval_epochs=1,
    reload_train_loader=False,  # rebuild the train dataset/loader each epoch (no config needs it: ds_2's
    #                                   curriculum is set per batch by its prepare_batch)
    curr_epoch=0,  # set by train.py before each (re)build of the train dataset
    num_workers=8,  # as the reference; train.py takes min(num_workers, cores per process)
    log_every=20,  # steps between reads of the loss (a host sync) for the progress bar and the tracker
    max_train_rows=None,  # demo/test override: keep only the first N train rows
    max_val_rows=None,
)

# --- logging --------------------------------------------------------------------------------------
run_only(
    tracker="mlflow",  # "mlflow" / "wandb" / "neptune" / "none", or several: "mlflow,wandb" (engine/tracking.py)
    neptune_project=None,  # or env NEPTUNE_PROJECT
    neptune_mode=None,  # None -> env NEPTUNE_MODE, else "async" with a token, "offline" without; set to a mode
    #                     (not off), it adds Neptune to the trackers, as older command lines expect
)

basic_cfg = cfg

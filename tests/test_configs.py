"""Configs cfg_1, cfg_3, cfg_4, cfg_5a-d hold docs/solution.md §7's values; 5b-d differ from 5a only where docs/solution.md says."""
import pytest

from engine.build import build_dataset, build_model
from utils.config import ConfigError, apply_overrides, cfg_to_dict, load_config

# docs/solution.md §7: model, dataset, train file, backbone, epochs, lr, batch, grad accum, clip, AMP
TABLE = {
    "cfg_1": ("mdl_1", "ds_1a", "train_folded_6k6c.csv", "mixnet_xl", 12, 1.2e-3, 8, 4, 20, False),
    "cfg_3": ("mdl_3", "ds_1a", "train_folded_6k6c.csv", "mixnet_l", 12, 1.2e-3, 32, 1, 20, True),
    "cfg_4": ("mdl_4", "ds_1a", "train_folded_6k6c.csv", "mixnet_xl", 12, 1.2e-3, 16, 2, 20, True),
    "cfg_5a": ("mdl_4", "ds_1", "train_folded_6k6c.csv", "mixnet_xl", 16, 1.2e-3, 16, 2, 20, True),
}
FIELDS = ("model", "dataset", "train_df", "backbone", "epochs", "lr", "batch_size", "grad_accumulation",
          "clip_grad", "mixed_precision")


@pytest.mark.parametrize("name", sorted(TABLE))
def test_spec7_table(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert tuple(getattr(cfg, f) for f in FIELDS) == TABLE[name]
    assert (cfg.optimizer, cfg.weight_decay, cfg.schedule, cfg.pool, cfg.val_df) == (
        "Adam", 0.0, "cosine", "gem", "train_folded_6k6.csv")
    assert (cfg.drop_rate, cfg.drop_path_rate, cfg.channel_dropout_p, cfg.channel_dropout_max) == (0.2, 0.2, 0.5, 8)
    assert (cfg.band_aug_p, cfg.band_aug_max_channels, cfg.flip_p) == (0.2, 8, 0.5)
    assert (cfg.butter_low, cfg.butter_high, cfg.butter_order) == (0.5, 20.0, 2)
    assert cfg.in_chans == (1 if name == "cfg_1" else 3)


def test_mel_and_zoom_settings():
    c1, c3, c4, c5 = (load_config(n) for n in ("cfg_1", "cfg_3", "cfg_4", "cfg_5a"))
    assert c1.spec_args == dict(sample_rate=200, n_fft=1024, win_length=128, hop_length=39, n_mels=128,
                                f_min=0.53, f_max=40.0)
    main = dict(sample_rate=200, n_fft=512, win_length=128, hop_length=32, n_mels=64, f_min=0.53, f_max=30.0)
    assert c3.spec_args == c4.spec_args == c5.spec_args == main
    assert c1.top_db is None and c3.top_db is None and c4.top_db == c5.top_db == 100
    assert (c4.enlarge_len, c4.spec_args_center["n_fft"], c4.spec_args_center["win_length"],
            c4.spec_args_center["hop_length"]) == (2800, 2048, 32, 8)
    assert (c5.enlarge_len, c5.spec_args_center["n_fft"], c5.spec_args_center["win_length"],
            c5.spec_args_center["hop_length"]) == (2400, 2048, 16, 4)
    assert c4.cut_from_large_mel == c5.cut_from_large_mel == 0.2
    assert c5.center_jitter_p == 0.7 and c4.center_jitter_p == 0.0


@pytest.mark.parametrize("name,changes", [
    ("cfg_5b", {"drop_rate": 0.3}),
    ("cfg_5c", {"channel_dropout_p": 0.7}),
    ("cfg_5d", {"batch_size": 8, "grad_accumulation": 4,
                "spec_args_center": dict(sample_rate=200, n_fft=2048, win_length=8, hop_length=2, n_mels=64,
                                         f_min=0.53, f_max=30.0)}),
])
def test_5bcd_are_5a_plus_their_change(name, changes):
    base, cfg = cfg_to_dict(load_config("cfg_5a")), cfg_to_dict(load_config(name))
    diff = {k: v for k, v in cfg.items() if base.get(k) != v and k != "name"}
    assert diff == changes


def test_missing_modules_and_fields_are_config_errors():
    cfg = load_config("cfg_1")
    cfg.model = "mdl_99"
    with pytest.raises(ConfigError, match="model module 'mdl_99' does not exist"):
        build_model(cfg)
    cfg.dataset = "ds_99"
    with pytest.raises(ConfigError, match="dataset module 'ds_99' does not exist"):
        build_dataset(None, cfg, "train")
    cfg = load_config("cfg_3")
    cfg.pretrained, cfg.backbone = False, "no_such_net"
    with pytest.raises(ConfigError, match="backbone 'no_such_net'"):
        build_model(cfg)
    with pytest.raises(ConfigError, match="unknown config 'cfg_99'"):
        load_config("cfg_99")


def test_overrides_reach_dict_fields():
    cfg = apply_overrides(load_config("cfg_5a"), ["--enlarge_len", "2000", "--spec_args_center",
                                                  "{'sample_rate': 200, 'n_fft': 1024, 'hop_length': 4}"])
    assert cfg.enlarge_len == 2000 and cfg.spec_args_center["n_fft"] == 1024

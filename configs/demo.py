"""The demo's CPU-sized settings as plain values (scripts/demo.py trains with them; train.py quotes them when a
real-size config is started on a CPU): each config's own model, dataset, augmentations and schedule, at a size
that trains in minutes on 2 cores."""
from __future__ import annotations

import importlib

DEMO_SEED = 1001  # one seed per run: the fold's run folder is seed1001


def demo_fields(name: str, epochs: int = 7, max_train_rows: int = 160) -> dict:
    """The CPU-sized changes to config `name` as {field: value} (derived from its own values, so each config
    keeps its shape); scripts/demo.py writes them to the runs' overrides file.

    Validation runs once, after the last epoch (that is what the blend reads); batch 8 gives the small
    data more optimiser steps for the same compute."""
    cfg = importlib.import_module(f"configs.{name}").cfg  # read only
    over = {"pretrained": False, "num_workers": 0, "neptune_mode": "off", "mixed_precision": False,
            "batch_size": 8, "grad_accumulation": 1, "lr": 3e-3, "epochs": epochs, "eval_epochs": epochs,
            "max_train_rows": max_train_rows}
    if cfg.model == "mdl_2":
        mdl2_epochs = max(1, epochs - 2)
        over.update(frontend_filters=8, sq_dim=16, sq_heads=2, sq_layers=1, epochs=mdl2_epochs, eval_epochs=mdl2_epochs,
                    max_train_rows=min(max_train_rows, 128))
    else:
        over["backbone"] = "test_efficientnet"
        over["spec_args"] = dict(cfg.spec_args, n_fft=min(cfg.spec_args["n_fft"], 512), n_mels=16,
                                 hop_length=cfg.spec_args["hop_length"] * 8)
        if hasattr(cfg, "spec_args_center"):
            c = cfg.spec_args_center
            over["spec_args_center"] = dict(c, n_fft=256, n_mels=16, hop_length=c["hop_length"] * 16)
    return over


def demo_overrides(name: str, epochs: int = 7, max_train_rows: int = 160) -> list[str]:
    """demo_fields as train.py's arguments (`--field value`)."""
    over = demo_fields(name, epochs, max_train_rows)
    return [tok for key, value in over.items() for tok in (f"--{key}", repr(value) if isinstance(value, dict) else str(value))]

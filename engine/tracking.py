"""Experiment logging: local metrics files always, Neptune when it can.

Neptune settings come from cfg.neptune_project / cfg.neptune_mode, else NEPTUNE_PROJECT /
NEPTUNE_MODE. Without NEPTUNE_API_TOKEN a remote mode becomes "offline" with its data under the
run folder (upload later with `neptune sync`). Every Neptune call is guarded: the first failure
is reported once and Neptune is switched off; training never stops for logging.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch

from utils.io import atomic_write_text

OFF_MODES = ("off", "none", "disabled", "false")
METRIC_FIELDS = ["epoch", "step", "train_loss", "lr", "val_loss", "val_kl", "prior_kl", "oracle_kl"]


def neptune_settings(cfg) -> tuple[str | None, str]:
    """(project, mode) after config/env resolution and the no-token fallback to offline."""
    project = cfg.neptune_project or os.environ.get("NEPTUNE_PROJECT") or None
    mode = (cfg.neptune_mode or os.environ.get("NEPTUNE_MODE") or "async").lower()
    if mode not in OFF_MODES and mode in ("async", "sync") and not os.environ.get("NEPTUNE_API_TOKEN"):
        mode = "offline"
    return project, mode


class Tracker:
    """Rank-0 logger: metrics.csv (rewritten atomically after each epoch) plus an optional Neptune run."""

    def __init__(self, cfg, out_dir, enabled: bool = True, resume_history: list | None = None, log=print):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.history: list[dict] = list(resume_history or [])
        self.log = log
        self.run = None
        if not enabled:
            return
        project, mode = neptune_settings(cfg)
        if mode in OFF_MODES:
            return
        where = os.environ.get("NEPTUNE_DATA_DIRECTORY") or str(self.out_dir / "neptune")
        if mode == "offline":
            why = "offline mode" if os.environ.get("NEPTUNE_API_TOKEN") else "no NEPTUNE_API_TOKEN, so offline"
            self.log(f"neptune: {why}: logging to {where}; "
                     f"upload later with `neptune sync --path {where}" + (f" --project {project}`" if project else "`"))
        self.run = self._safe(self._init, project, mode, where)
        if self.run is not None:
            self._safe(self._set, "cfg", {k: _loggable(v) for k, v in vars(cfg).items()})

    @staticmethod
    def _init(project, mode, data_dir):
        import neptune

        old = os.environ.get("NEPTUNE_DATA_DIRECTORY")
        os.environ["NEPTUNE_DATA_DIRECTORY"] = data_dir  # read by init_run only; restored below
        try:
            return neptune.init_run(project=project, mode=mode, capture_stdout=False, capture_stderr=False,
                                    capture_hardware_metrics=torch.cuda.is_available(),
                                    source_files=[], git_ref=False)
        finally:
            if old is None:
                os.environ.pop("NEPTUNE_DATA_DIRECTORY", None)
            else:
                os.environ["NEPTUNE_DATA_DIRECTORY"] = old

    def _set(self, key, value):
        self.run[key] = value

    def _safe(self, fn, *args):
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            self.log(f"neptune: disabled after error: {type(err).__name__}: {err}")
            self.run = None
            return None

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if self.run is not None:
            self._safe(lambda: (self.run["train/loss"].append(loss, step=step),
                                self.run["train/lr"].append(lr, step=step)))

    def log_epoch(self, row: dict) -> None:
        """Append one epoch's metrics, rewrite metrics.csv, mirror to Neptune."""
        row = {k: row.get(k) for k in METRIC_FIELDS}
        self.history.append(row)
        if not self.enabled:
            return
        self.write_csv()
        if self.run is not None:
            step = row["step"]
            for key, value in row.items():
                if key not in ("epoch", "step") and value is not None:
                    self._safe(lambda k=key, v=value: self.run[f"epoch/{k}"].append(float(v), step=step))

    def write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())

    def close(self) -> None:
        if self.run is not None:
            self._safe(self.run.stop)
            self.run = None


def _loggable(value):
    if isinstance(value, (int, float, str, bool)):
        return value
    return json.dumps(value, default=str)

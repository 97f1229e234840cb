"""Experiment tracking: the run folder's metrics.csv always, and the backends `cfg.tracker` names.

    --tracker mlflow (default) | wandb | neptune | none, or several: --tracker mlflow,wandb

MLflow writes to MLFLOW_TRACKING_URI, else to a local store <output_dir>/mlruns: one experiment per output
folder, one run per training run named <cfg>/fold<f>/seed<s>. W&B logs offline unless WANDB_MODE is set or an
API key is found. Neptune as before (cfg.neptune_mode / cfg.neptune_project); an explicit `--neptune_mode
async|sync|offline|...` adds Neptune to the trackers, so older command lines keep working. The backends are in
engine/tracking_backends.py.

metrics.csv, config.json and the learning curve are written whatever the tracker. Every backend call is
guarded: the first failure (server down, quota, bad token, package missing) is reported in one line and that
backend is switched off; training never stops for tracking. Each backend's run id is kept in the run folder
(tracking.json), so a resumed run continues the same tracked run. Only rank 0 tracks (enabled=info.is_main).
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from engine.tracking_backends import BACKENDS, FAILED, FINISHED, KILLED, OFF_MODES, BackendOff, RunSpec
from utils.config import ConfigError
from utils.io import atomic_write_text, one_line

METRIC_FIELDS = ["epoch", "step", "train_loss", "lr", "val_loss", "val_kl", "prior_kl", "oracle_kl"]
STATE_FILE = "tracking.json"  # each backend's run id, for a resumed run
DEFAULT_TRACKER = "mlflow"  # as configs/default_config.py (for runs saved before the field existed)


def tracker_names(cfg) -> list[str]:
    """The backends a config asks for, checked: cfg.tracker ("mlflow", "mlflow,wandb", "none", a list) plus
    Neptune where cfg.neptune_mode names a mode explicitly (unless the tracker is "none")."""
    raw = getattr(cfg, "tracker", DEFAULT_TRACKER)
    if raw is None:
        raw = "none"
    items = raw if isinstance(raw, (list, tuple)) else str(raw).replace(" ", ",").split(",")
    names = [str(n).strip().lower() for n in items if str(n).strip()]
    unknown = [n for n in names if n not in BACKENDS and n not in OFF_MODES]
    if unknown or (len(names) > 1 and any(n in OFF_MODES for n in names)):
        raise ConfigError(f"bad value for --tracker: {raw!r} ({', '.join(BACKENDS)} or none; several "
                          f"comma-separated, e.g. mlflow,wandb)")
    if not names or names[0] in OFF_MODES:
        return []
    mode = getattr(cfg, "neptune_mode", None)
    if mode and str(mode).lower() not in OFF_MODES:
        names.append("neptune")
    return list(dict.fromkeys(names))


def experiment_name(output_dir) -> str:
    """One experiment per output folder: its absolute path."""
    return str(Path(output_dir).resolve())


class RunLogger:
    """One run in each of the named backends; every call guarded (first error: one line, backend off).

    A context manager too: leaving the block ends the runs, FAILED if it raised."""

    def __init__(self, names, spec: RunSpec, state_path: Path | None = None, log=print):
        self.log = log
        self.backends = []
        self.state_path = state_path
        state = read_state(state_path)
        before = json.dumps(state, sort_keys=True)
        for name in names:
            backend = self._guard(name, BACKENDS[name], spec, state.setdefault(name, {}), log)
            if backend is not None:
                self.backends.append(backend)
        if state_path is not None and self.backends and json.dumps(state, sort_keys=True) != before:
            atomic_write_text(state_path, json.dumps(state, indent=1))

    def _guard(self, name, fn, *args):
        try:
            return fn(*args)
        except BackendOff:
            return None
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            text = one_line(err)
            text = text if len(text) <= 300 else text[:297] + "..."
            self.log(f"warning: {name}: disabled after error: {type(err).__name__}: {text}")
            return None

    def _each(self, method: str, *args) -> None:
        for backend in list(self.backends):
            if self._guard(backend.name, lambda b=backend: getattr(b, method)(*args) or True) is None:
                self.backends.remove(backend)

    def step_metrics(self, values: dict, step: int) -> None:
        self._each("step_metrics", values, step)

    def metrics(self, values: dict, step: int, group: str | None = None) -> None:
        self._each("metrics", values, step, group)

    def files(self, paths) -> None:
        paths = [Path(p) for p in paths if p is not None and Path(p).is_file()]
        if paths:
            self._each("files", paths)

    def end(self, status: str = FINISHED) -> None:
        self._each("end", status)
        self.backends = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.end(FINISHED if exc_type is None else KILLED if issubclass(exc_type, KeyboardInterrupt) else FAILED)


def read_state(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


class Tracker:
    """Rank-0 logger of a training run: metrics.csv (rewritten atomically after each epoch) and the runs of
    the trackers the config names. `tags`: world size, device and precision, as train.py resolved them."""

    def __init__(self, cfg, out_dir, enabled: bool = True, resume_history: list | None = None, log=print,
                 tags: dict | None = None):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.history: list[dict] = list(resume_history or [])
        self.log = log
        self.runs = None
        names = tracker_names(cfg)  # checked on every rank, so a typo stops all of them alike
        if not enabled or not names:
            return
        tags = {"config": cfg.name, "fold": cfg.fold, "seed": cfg.seed, **(tags or {})}
        if tags.get("device") == "cuda":
            tags["gpu"] = _gpu_name()
        spec = RunSpec(name=f"{cfg.name}/fold{cfg.fold}/seed{cfg.seed}", kind="train", output_dir=Path(cfg.output_dir),
                       run_dir=self.out_dir, experiment=experiment_name(cfg.output_dir),
                       params={k: v for k, v in vars(cfg).items() if not k.startswith("_")},
                       tags=tags, history=[dict(r) for r in self.history], cfg=cfg)
        self.runs = RunLogger(names, spec, self.out_dir / STATE_FILE, log)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if self.runs is not None:
            self.runs.step_metrics({"train/loss": loss, "train/lr": lr}, step)

    def log_epoch(self, row: dict) -> None:
        """Append one epoch's metrics, rewrite metrics.csv, send them to the trackers at the epoch's step."""
        row = {k: row.get(k) for k in METRIC_FIELDS}
        self.history.append(row)
        if not self.enabled:
            return
        self.write_csv()
        if self.runs is not None:
            self.runs.metrics({k: v for k, v in row.items() if k != "step"}, row["step"], group="epoch")

    def write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())

    def finish(self, files=()) -> None:
        """The run finished: attach its outputs (and metrics.csv) and end its tracked runs as FINISHED."""
        if self.runs is not None:
            self.runs.files([*files, self.out_dir / "metrics.csv"])
            self.runs.end(FINISHED)
            self.runs = None

    def close(self) -> None:
        """End the tracked runs of a run that did not finish: FAILED while an error propagates, KILLED when
        interrupted or stopped by --stop_after_epochs (a resume continues the same runs). No-op after finish."""
        if self.runs is not None:
            err = sys.exc_info()[1]
            self.runs.end(FAILED if isinstance(err, Exception) else KILLED)
            self.runs = None


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "?"


# --- runs that are not training runs (the blend) --------------------------------------------------
def trackers_of_runs(output_dir, configs) -> list[str]:
    """The trackers the training runs of these configs used (their config.json), the default if none says."""
    names = []
    for config in configs:
        for path in sorted(Path(output_dir).glob(f"{config}/fold*/seed*/config.json")):
            try:
                saved = json.loads(path.read_text())
                names += tracker_names(SimpleNamespace(tracker=saved.get("tracker", DEFAULT_TRACKER),
                                                       neptune_mode=saved.get("neptune_mode")))
            except (OSError, ValueError, ConfigError):
                continue
    return list(dict.fromkeys(names)) if names else [DEFAULT_TRACKER]


def open_run(tracker, output_dir, name: str, kind: str, params: dict, tags: dict | None = None, configs=(),
             log=print) -> RunLogger:
    """A tracked run beside the training runs of `output_dir` (same experiment), e.g. the blend:

        with open_run(None, out, "blend", "blend", params, configs=cfgs) as run:
            run.metrics({...}, step=0); run.files([...])

    tracker: "mlflow", "mlflow,wandb", "none"...; None: the trackers the runs of `configs` used."""
    names = trackers_of_runs(output_dir, configs) if tracker is None else tracker_names(
        SimpleNamespace(tracker=tracker, neptune_mode=None))
    spec = RunSpec(name=name, kind=kind, output_dir=Path(output_dir), run_dir=Path(output_dir),
                   experiment=experiment_name(output_dir), params=params, tags={"kind": kind, **(tags or {})})
    return RunLogger(names, spec, None, log)

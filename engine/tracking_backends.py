"""The tracking backends behind engine/tracking.py: MLflow, Weights & Biases, Neptune.

Each backend holds one run in one service. Its package is imported only when the backend starts, so
train.py's start-up does not pay for it and a missing package is one warning line. Any method may raise:
engine/tracking.RunLogger reports the first error in one line and switches that backend off.

    Backend(spec, state, log)          start the run, or continue the one whose id `state` holds
    .step_metrics(values, step)        the running training loss and lr (every `log_every` batches)
    .metrics(values, step, group)      one epoch's metrics (group "epoch") or a blend's numbers
    .files(paths)                      a finished run's outputs
    .end(status)                       FINISHED, FAILED or KILLED (stopped, to be resumed, or interrupted)

`state` is a dict the run folder keeps between sessions (tracking.json): a backend writes its run's id
there, so that a resumed training run continues the same run rather than starting a second one.
"""
from __future__ import annotations

import getpass
import json
import numbers
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
OFF_MODES = ("off", "none", "disabled", "false")

# MLflow retries a failed request 7 times with exponential back-off and waits 120 s for an answer by default:
# a tracking server that is down would stall training for minutes. Set unless the user has set them.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's limits (mlflow.utils.validation; these values where a version lacks one)
MLFLOW_LIMITS = {"MAX_PARAM_VAL_LENGTH": 500, "MAX_TAG_VAL_LENGTH": 5000, "MAX_ENTITY_KEY_LENGTH": 250,
                 "MAX_EXPERIMENT_NAME_LENGTH": 500, "MAX_PARAMS_TAGS_PER_BATCH": 100, "MAX_METRICS_PER_BATCH": 1000}
WANDB_PROJECT = "hms-harmful-brain-activity"


class BackendOff(Exception):
    """Raised by a backend that its own settings turn off (e.g. --neptune_mode off): no warning."""


@dataclass
class RunSpec:
    """What a backend needs to open a run: its name and kind, where its files go, what it logs first."""
    name: str  # "<cfg>/fold<f>/seed<s>" or "blend"
    kind: str  # "train" or "blend"
    output_dir: Path  # one experiment (MLflow) / group (W&B) per output folder
    run_dir: Path  # the backend's own files (W&B's offline runs, Neptune's offline data)
    experiment: str
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # epoch rows logged before a resume (for a run started afresh)
    cfg: SimpleNamespace | None = None  # backend settings that live in the config (Neptune's)


def param_text(value) -> str:
    """A config value as one parameter string: numbers and strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, default=str)


def numeric(values: dict) -> dict:
    """The values that are numbers (None, i.e. not measured this epoch, is left out)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


# --- MLflow ---------------------------------------------------------------------------------------
# MLflow 3 asks each experiment's kind (GenAI or model training): these experiments train models
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def mlflow_store(output_dir) -> tuple[str, Path | None]:
    """(tracking URI, local store folder or None): MLFLOW_TRACKING_URI if set, else <output_dir>/mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    store = Path(output_dir).resolve() / "mlruns"
    return store.as_uri(), store


class MlflowBackend:
    name = "mlflow"

    def __init__(self, spec: RunSpec, state: dict, log):
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        uri, store = mlflow_store(spec.output_dir)
        if "://" not in uri or uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it; see the README
        limits = SimpleNamespace(**{k: getattr(validation, k, v) for k, v in MLFLOW_LIMITS.items()})
        self._error, self._limits, self._buffer = MlflowException, limits, []
        self.client = MlflowClient(tracking_uri=uri)
        where = "local" if store is not None else uri
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or spec.experiment[-limits.MAX_EXPERIMENT_NAME_LENGTH:]
        self.experiment_id = self._experiment(exp_name, local=store is not None)
        tags = {k: str(v)[:limits.MAX_TAG_VAL_LENGTH] for k, v in spec.tags.items()}
        run = self._existing(state.get("run_id"), log) if state.get("where") == where else None
        resumed = run is not None
        if not resumed:
            tags.update({"mlflow.source.name": "train.py" if spec.kind == "train" else "inference/blend.py",
                         "mlflow.source.type": "LOCAL", "mlflow.user": _user()})
            run = self.client.create_run(self.experiment_id, run_name=spec.name, tags=tags)
            logged, done = {}, set()
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            logged = run.data.params
            done = {m.step for m in self.client.get_metric_history(run.info.run_id, "train_loss")}
        self.run_id = run.info.run_id
        state.clear()
        state.update(where=where, experiment_id=self.experiment_id, run_id=self.run_id)
        params = {k[:limits.MAX_ENTITY_KEY_LENGTH]: param_text(v)[:limits.MAX_PARAM_VAL_LENGTH]
                  for k, v in spec.params.items()}
        changed = {f"resumed_with.{k}": v[:limits.MAX_TAG_VAL_LENGTH] for k, v in params.items()
                   if k in logged and logged[k] != v}  # MLflow never changes a logged parameter
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        extra = [RunTag(k, v) for k, v in {**(tags if resumed else {}), **changed}.items()]
        per = limits.MAX_PARAMS_TAGS_PER_BATCH
        for i in range(0, max(len(new), len(extra)), per):
            self.client.log_batch(self.run_id, params=new[i:i + per], tags=extra[i:i + per])
        for row in spec.history:  # epochs of a resumed run that this MLflow run has not seen
            if row.get("step") not in done:
                self.metrics({k: v for k, v in row.items() if k != "step"}, row["step"])
        if store is not None:
            log(f"mlflow: run '{spec.name}' in {store} (see every run: MLFLOW_ALLOW_FILE_STORE=true "
                f"mlflow ui --backend-store-uri {store})")
        else:
            log(f"mlflow: run '{spec.name}' at {uri}, experiment '{exp_name}'")

    def _experiment(self, name: str, local: bool) -> str:
        """The output folder's experiment. A local store holds one output folder: its default experiment (id 0,
        which every process opening the store makes alike) is renamed after the folder, so that runs starting
        at the same moment (a SLURM array) cannot make two experiments of one name."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None and local:
            default = self._default_experiment()
            if default is not None and default.lifecycle_stage == "active" and default.name == "Default":
                try:
                    self.client.rename_experiment("0", name)
                    self._mark_kind("0")
                except self._error as err:  # renamed by another run a moment ago
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
            exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, tags={EXPERIMENT_KIND: MODEL_TRAINING})
            except self._error as err:  # created by a run that started at the same moment
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(name)
        if exp.lifecycle_stage != "active":
            raise RuntimeError(f"experiment '{name}' is deleted; restore it (`mlflow experiments restore "
                               f"--experiment-id {exp.experiment_id}`) or set MLFLOW_EXPERIMENT_NAME")
        return exp.experiment_id

    def _mark_kind(self, experiment_id) -> None:
        try:
            self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        except Exception:  # noqa: BLE001 - cosmetic (a file store may race on its tags folder)
            pass

    def _default_experiment(self, wait: float = 3.0):
        """Experiment 0 of a local store; a run that opened the store a moment earlier may still be writing it."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.client.get_experiment("0")
            except Exception:  # noqa: BLE001 - not there yet, or half written
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)

    def _existing(self, run_id, log):
        """The run a resumed training run continues, or None (gone: a new run, with the earlier epochs)."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except self._error as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            log(f"mlflow: run {run_id} of this run folder is gone; starting a new one with the earlier epochs")
            return None
        return run

    def step_metrics(self, values: dict, step: int) -> None:
        self._add(values, step)  # sent with the epoch's metrics: one request per epoch

    def metrics(self, values: dict, step: int, group: str | None = None) -> None:
        self._add(values, step)
        self._flush()

    def _add(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(k, v, now, int(step)) for k, v in numeric(values).items()]

    def _flush(self):
        per = self._limits.MAX_METRICS_PER_BATCH
        while self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer[:per])
            del self._buffer[:per]

    def files(self, paths) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self._flush()
        self.client.set_terminated(self.run_id, status=status)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


# --- Weights & Biases -----------------------------------------------------------------------------
def wandb_mode() -> tuple[str, str]:
    """(mode, why): WANDB_MODE if set, else online with an API key (WANDB_API_KEY or ~/.netrc), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"].lower(), "WANDB_MODE"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "WANDB_API_KEY"
    try:
        import netrc
        from urllib.parse import urlparse

        host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
        if netrc.netrc().authenticators(host):
            return "online", "~/.netrc"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline", "no W&B API key, so offline"


class WandbBackend:
    name = "wandb"

    def __init__(self, spec: RunSpec, state: dict, log):
        import torch
        import wandb

        mode, why = wandb_mode()
        if mode in OFF_MODES:
            raise BackendOff
        resumed = bool(state.get("id"))
        run_id = state.get("id") or secrets.token_hex(6)  # W&B ids: [a-z0-9], kept for a resume
        settings = dict(console="off", silent=True, save_code=False, disable_git=True,
                        x_disable_stats=not torch.cuda.is_available())
        if not os.environ.get("WANDB_INIT_TIMEOUT"):
            settings["init_timeout"] = 30.0  # not 90 s: a W&B server out of reach costs training little
        tags = [f"{k}:{v}"[:64] for k, v in spec.tags.items()]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
                              entity=os.environ.get("WANDB_ENTITY") or None, group=spec.experiment[-128:],
                              job_type=spec.kind, name=spec.name, id=run_id, resume="allow", dir=str(spec.run_dir),
                              config={**{k: param_text(v) if isinstance(v, (list, tuple, dict)) else v
                                         for k, v in spec.params.items()}, **{f"run/{k}": v for k, v in spec.tags.items()}},
                              tags=tags, mode=mode, settings=wandb.Settings(**settings))
        state.clear()
        state.update(id=run_id)
        if not resumed:
            for row in spec.history:
                self.metrics({k: v for k, v in row.items() if k != "step"}, row["step"])
        folder = Path(self.run.dir).parent
        if mode == "offline":
            log(f"wandb: {why}: run '{spec.name}' logged to {folder}; upload later with `wandb sync {folder}`")
        else:
            log(f"wandb: run '{spec.name}' ({mode}): {getattr(self.run, 'url', None) or folder}")

    def step_metrics(self, values: dict, step: int) -> None:
        self.run.log(numeric(values), step=int(step))

    def metrics(self, values: dict, step: int, group: str | None = None) -> None:
        self.run.log(numeric(values), step=int(step))

    def files(self, paths) -> None:
        """Copied into the run's files folder (uploaded at the end, or by `wandb sync`; a link would break
        when a --force run's folder is moved into place)."""
        for path in paths:
            shutil.copy2(path, Path(self.run.dir) / Path(path).name)

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == FINISHED else 1)


# --- Neptune (as before: its hosted service closed on 5 March 2026; self-hosted servers and offline files) ---
def neptune_settings(cfg) -> tuple[str | None, str]:
    """(project, mode) after config/env resolution and the no-token fallback to offline."""
    project = getattr(cfg, "neptune_project", None) or os.environ.get("NEPTUNE_PROJECT") or None
    mode = (getattr(cfg, "neptune_mode", None) or os.environ.get("NEPTUNE_MODE") or "async").lower()
    if mode not in OFF_MODES and mode in ("async", "sync") and not os.environ.get("NEPTUNE_API_TOKEN"):
        mode = "offline"
    return project, mode


def _loggable(value):
    if isinstance(value, (int, float, str, bool)):
        return value
    return json.dumps(value, default=str)


class NeptuneBackend:
    """Neptune settings come from cfg.neptune_project / cfg.neptune_mode, else NEPTUNE_PROJECT / NEPTUNE_MODE.
    Without NEPTUNE_API_TOKEN a remote mode becomes "offline" with its data under the run folder (upload
    later with `neptune sync`)."""
    name = "neptune"

    def __init__(self, spec: RunSpec, state: dict, log):
        project, mode = neptune_settings(spec.cfg)
        if mode in OFF_MODES:
            raise BackendOff
        where = os.environ.get("NEPTUNE_DATA_DIRECTORY") or str(spec.run_dir / "neptune")
        if mode == "offline":
            why = "offline mode" if os.environ.get("NEPTUNE_API_TOKEN") else "no NEPTUNE_API_TOKEN, so offline"
            log(f"neptune: {why}: logging to {where}; "
                f"upload later with `neptune sync --path {where}" + (f" --project {project}`" if project else "`"))
        self.run = self._init(project, mode, where)
        self.run["cfg"] = {k: _loggable(v) for k, v in spec.params.items()}

    @staticmethod
    def _init(project, mode, data_dir):
        import neptune
        import torch

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

    def step_metrics(self, values: dict, step: int) -> None:
        for key, value in numeric(values).items():
            self.run[key].append(value, step=step)

    def metrics(self, values: dict, step: int, group: str | None = None) -> None:
        for key, value in numeric(values).items():
            if group != "epoch" or key != "epoch":
                self.run[f"{group}/{key}" if group else key].append(value, step=step)

    def files(self, paths) -> None:
        pass  # as before: Neptune keeps the metrics and the config

    def end(self, status: str) -> None:
        self.run.stop()


BACKENDS = {b.name: b for b in (MlflowBackend, WandbBackend, NeptuneBackend)}

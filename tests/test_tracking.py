"""Experiment tracking (issue 20): MLflow (local store, failures, resume, DDP, the blend), W&B offline, the
tracker setting. The MLflow tracking server tests are in test_tracking_server.py and use the helpers here.

Shared helpers: tiny training runs, an MLflow run read back through MLflow's client and compared with the run
folder, W&B's offline run files read back record by record."""
from __future__ import annotations

import importlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import train
from engine.tracking import Tracker, tracker_names
from engine.tracking_backends import MlflowBackend, param_text
from inference import blend
from utils import checkpoint as ckpt
from utils.config import ConfigError, load_config
from utils.io import run_cli

ROOT = Path(__file__).resolve().parents[1]

# cfg_2a shrunk as in test_train.py; one optimiser step per batch so that 1-2 batches per epoch train
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1", "--batch_size", "2",
         "--num_workers", "0", "--neptune_mode", "off", "--grad_accumulation", "1", "--eval_epochs", "1"]
EPOCH_METRICS = ["epoch", "train_loss", "lr", "val_loss", "val_kl", "prior_kl", "oracle_kl"]
ARTIFACTS = {"config.json", "learning_curve.png", "val_logits.csv", "metrics.csv"}
ENV_PREFIXES = ("MLFLOW_", "WANDB_", "NEPTUNE_")


def train_args(data, out, *extra, seed=1):
    return ["-C", "cfg_2a", "--fold", "0", "--data_dir", str(data), "--output_dir", str(out), "--seed", str(seed),
            "--max_train_rows", "4", *SMALL, *extra]


def run_ok(args):
    assert run_cli(train.main, args) == 0
    return args


def run_dir(out, seed=1):
    return ckpt.run_dir(out, "cfg_2a", 0, seed)


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restore_env(saved: dict) -> None:
    """Undo what the backends set in os.environ (MLflow's HTTP limits, MLFLOW_ALLOW_FILE_STORE...)."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
        if key not in saved:
            del os.environ[key]
    for key, value in saved.items():
        if key.startswith(ENV_PREFIXES):
            os.environ[key] = value


# --- MLflow ---------------------------------------------------------------------------------------
def local_store(output_dir) -> str:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to read a file store
    return (Path(output_dir) / "mlruns").resolve().as_uri()


def mlflow_runs(uri: str, output_dir):
    """(client, the runs of the output folder's experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(str(Path(output_dir).resolve()))
    assert exp is not None, f"no experiment for {output_dir} at {uri}"
    return client, client.search_runs([exp.experiment_id])


def check_mlflow_run(client, run, folder: Path, dl: Path, world_size: int = 1, steps=None) -> None:
    """The run equals its folder: name, tags, every config value as a parameter, each epoch metric's series
    equal to metrics.csv (step and value), the running loss at `steps` (default: each epoch's), the files
    as artifacts byte for byte."""
    cfg = json.loads((folder / "config.json").read_text())
    assert run.info.run_name == f"cfg_2a/fold0/seed{cfg['seed']}" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["config"], tags["fold"], tags["seed"]) == ("cfg_2a", "0", str(cfg["seed"]))
    assert (tags["world_size"], tags["device"], tags["precision"]) == (str(world_size), "cpu", "float32")
    assert run.data.params == {k: param_text(v) for k, v in cfg.items()}
    metrics = pd.read_csv(folder / "metrics.csv")
    for key in EPOCH_METRICS:
        rows = metrics[metrics[key].notna()]
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert logged == list(zip(rows["step"].tolist(), rows[key].tolist())), key
    steps = metrics["step"].tolist() if steps is None else steps  # log_every 20 > the batches of an epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == steps
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == ARTIFACTS
    dl.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        got = client.download_artifacts(run.info.run_id, name, str(dl))
        assert Path(got).read_bytes() == (folder / name).read_bytes(), name


# --- W&B's offline run files (.wandb: a LevelDB-style log of protobuf records) -----------------------
def wandb_records(path: Path, tmp: Path):
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # wandb makes temp folders when first imported (removed at exit): not in $TMPDIR
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    finally:
        tempfile.tempdir = saved
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full / first
            pending = chunk
        else:  # middle / last
            pending += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def wandb_offline_run(folder: Path, tmp: Path) -> dict:
    """Every offline session of a run folder: ids, names, config, history by key {step: value}, files."""
    sessions = sorted((folder / "wandb").glob("offline-run-*"))
    out = {"ids": [], "names": [], "config": {}, "history": {}, "sessions": sessions,
           "files": sessions[-1] / "files" if sessions else None}
    for session in sessions:
        (log,) = session.glob("run-*.wandb")
        for rec in wandb_records(log, tmp):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out["ids"].append(rec.run.run_id)
                out["names"].append(rec.run.display_name)
                out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "config":
                out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
            elif kind == "history":
                items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
                step = items["_step"]
                for key, value in items.items():
                    if not key.startswith("_"):
                        out["history"].setdefault(key, {})[step] = value
    return out


# --- the tests --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def tracking_env(tmp_path):
    """No tracking setting of the user's leaks in; what the backends set is undone; W&B's own folders
    (cache, config, staging) go to the test's folder rather than ~."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
        del os.environ[key]
    for name in ("CACHE", "CONFIG", "DATA"):
        os.environ[f"WANDB_{name}_DIR"] = str(tmp_path / "wandb_home" / name.lower())
    yield
    restore_env(saved)


@pytest.mark.parametrize("value, neptune_mode, names", [
    ("mlflow", None, ["mlflow"]), ("mlflow,wandb", None, ["mlflow", "wandb"]), (" MLflow , neptune", None, ["mlflow", "neptune"]),
    (["wandb", "mlflow"], None, ["wandb", "mlflow"]), ("none", None, []), (None, None, []), ("neptune,neptune", None, ["neptune"]),
    ("mlflow", "async", ["mlflow", "neptune"]),  # an explicit Neptune mode, as older command lines give, adds Neptune
    ("wandb", "off", ["wandb"]), ("none", "offline", [])])
def test_tracker_setting(value, neptune_mode, names):
    assert tracker_names(SimpleNamespace(tracker=value, neptune_mode=neptune_mode)) == names


def test_tracker_default_override_and_typos(tiny_data, tmp_path, capsys):
    assert load_config("cfg_2a").tracker == "mlflow" and tracker_names(load_config("cfg_5a")) == ["mlflow"]
    cfg, _ = train.parse_args(["-C", "cfg_2a", "--tracker", "mlflow,neptune"])
    assert cfg.tracker == "mlflow,neptune" and tracker_names(cfg) == ["mlflow", "neptune"]
    for bad in ("mlfow", "none,mlflow", "tensorboard"):
        with pytest.raises(ConfigError, match="--tracker"):
            tracker_names(SimpleNamespace(tracker=bad, neptune_mode=None))
    # a typo stops train.py before it trains, on every rank alike (checked before rank 0's own check)
    assert run_cli(train.main, train_args(tiny_data, tmp_path / "out", "--epochs", "1", "--tracker", "mlfow")) == 2
    assert "bad value for --tracker" in capsys.readouterr().err
    assert not run_dir(tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--tracker"):
        Tracker(SimpleNamespace(tracker="wandbb", neptune_mode=None), tmp_path, enabled=False)


def test_local_store_run_equals_its_folder_and_a_resume_continues_it(tiny_data, tmp_path, capsys):
    """No MLFLOW_TRACKING_URI: <output_dir>/mlruns, one experiment for the folder, one run per training run."""
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "3", "--stop_after_epochs", "1"))
    state = json.loads((run_dir(out) / "tracking.json").read_text())["mlflow"]
    client, runs = mlflow_runs(local_store(out), out)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(state["run_id"], "KILLED")]  # stopped, resumable
    assert [m.step for m in client.get_metric_history(state["run_id"], "val_kl")] == [2]

    run_ok(train_args(tiny_data, out, "--epochs", "3", "--resume", "--log_every", "1"))  # a changed config field
    printed = capsys.readouterr().out
    assert printed.count("mlflow: run 'cfg_2a/fold0/seed1' in ") == 2 and "changed config field(s) log_every" in printed
    client, runs = mlflow_runs(local_store(out), out)
    assert [r.info.run_id for r in runs] == [state["run_id"]]  # the resumed run is the same MLflow run
    assert len(pd.read_csv(run_dir(out) / "metrics.csv")) == 3
    # the parameters stay those of config.json (MLflow never changes one); the change is a tag
    assert runs[0].data.tags["resumed_with.log_every"] == "1"
    check_mlflow_run(client, runs[0], run_dir(out), tmp_path / "dl1", steps=[2, 3, 4, 5, 6])  # every batch after it

    run_ok(train_args(tiny_data, out, "--epochs", "1", seed=2))  # another run of the folder: same experiment
    client, runs = mlflow_runs(local_store(out), out)
    assert sorted(r.info.run_name for r in runs) == ["cfg_2a/fold0/seed1", "cfg_2a/fold0/seed2"]
    check_mlflow_run(client, next(r for r in runs if r.info.run_name.endswith("seed2")), run_dir(out, 2), tmp_path / "dl2")
    assert sorted(p.name for p in out.iterdir()) == ["cfg_2a", "mlruns"]


CONCURRENT = """
import importlib, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
importlib.import_module("mlflow.tracking")
from engine.tracking import Tracker
from utils.config import load_config
cfg = load_config("cfg_2a")
cfg.output_dir, cfg.fold, cfg.seed = {out!r}, 0, int(sys.argv[1])
folder = Path(cfg.output_dir) / "cfg_2a" / "fold0" / f"seed{{cfg.seed}}"
folder.mkdir(parents=True)
while not Path({go!r}).exists():
    time.sleep(0.002)
Tracker(cfg, folder).finish([])
"""


def test_runs_starting_together_make_one_experiment(tmp_path):
    """A SLURM array starts many runs of one output folder at once: still one experiment in the local store."""
    out, go = tmp_path / "out", tmp_path / "go"
    code = CONCURRENT.format(root=str(ROOT), out=str(out), go=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for seed in range(1, 5)]
    time.sleep(1.0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all((out / "cfg_2a" / "fold0" / f"seed{s}").is_dir() for s in range(1, 5)):
        time.sleep(0.05)  # every process has imported MLflow and waits
    go.touch()
    printed = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and not any("warning" in text for text in printed), printed
    client, runs = mlflow_runs(local_store(out), out)
    assert sorted(r.info.run_name for r in runs) == [f"cfg_2a/fold0/seed{s}" for s in range(1, 5)]
    assert [e.name for e in client.search_experiments()] == [str(out.resolve())]


def test_a_resume_whose_mlflow_run_is_gone_starts_one_with_the_earlier_epochs(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "2", "--stop_after_epochs", "1"))
    client, (first,) = mlflow_runs(local_store(out), out)
    client.delete_run(first.info.run_id)
    run_ok(train_args(tiny_data, out, "--epochs", "2", "--resume"))
    assert "is gone; starting a new one with the earlier epochs" in capsys.readouterr().out
    client, runs = mlflow_runs(local_store(out), out)
    (run,) = [r for r in runs if r.info.lifecycle_stage == "active"]
    # both epochs, the first one backfilled from metrics.csv (its running loss is not kept: only the second's)
    check_mlflow_run(client, run, run_dir(out), tmp_path / "dl", steps=[4])


def test_tracking_server_down_is_one_warning_and_a_finished_run_quickly(tiny_data, tmp_path, capfd):
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    importlib.import_module("mlflow.tracking")  # before the clock starts: the timing is the tracker's own

    cfg = load_config("cfg_2a")
    cfg.output_dir, cfg.fold, cfg.seed = str(tmp_path / "direct"), 0, 1
    (tmp_path / "direct").mkdir()
    start = time.perf_counter()
    tracker = Tracker(cfg, tmp_path / "direct", tags={"world_size": 1, "device": "cpu", "precision": "float32"})
    tracker.log_step(1, 0.5, 1e-3)
    tracker.log_epoch({"epoch": 0, "step": 1, "train_loss": 0.5, "lr": 1e-3})
    tracker.finish([])
    assert time.perf_counter() - start < 5  # MLflow alone would retry 7 times with back-off: minutes
    capfd.readouterr()

    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "2"))
    captured = capfd.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if "mlflow" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("warning: mlflow: disabled after error: MlflowException: "), lines
    assert ckpt.is_finished(run_dir(out)) and len(pd.read_csv(run_dir(out) / "metrics.csv")) == 2
    assert not (run_dir(out) / "tracking.json").exists() and not (out / "mlruns").exists()


def test_a_failing_or_missing_tracker_is_one_warning_and_training_goes_on(tiny_data, tmp_path, capsys, monkeypatch):
    def quota(self, values, step, group=None):
        raise RuntimeError("quota exceeded\n(a second line that is not printed)")

    monkeypatch.setattr(MlflowBackend, "metrics", quota)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "2", "--tracker", "mlflow,wandb"))
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
    assert [w.split(":")[1].strip() for w in warnings] == ["wandb", "mlflow"], warnings
    assert "ModuleNotFoundError" in warnings[0] and warnings[1].endswith("RuntimeError: quota exceeded")
    assert ckpt.is_finished(run_dir(out)) and len(pd.read_csv(run_dir(out) / "metrics.csv")) == 2


def test_no_tracker_still_writes_the_run_files_and_neptune_alone(tiny_data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run_ok(train_args(tiny_data, a, "--epochs", "1", "--tracker", "none"))
    assert "mlflow" not in capsys.readouterr().out
    assert {"metrics.csv", "config.json", "learning_curve.png", "val_logits.csv"} <= {p.name for p in run_dir(a).iterdir()}
    assert not (run_dir(a) / "tracking.json").exists() and sorted(p.name for p in a.iterdir()) == ["cfg_2a"]

    run_ok(train_args(tiny_data, b, "--epochs", "1", "--tracker", "neptune", "--neptune_mode", "offline"))
    assert "neptune: no NEPTUNE_API_TOKEN, so offline" in capsys.readouterr().out
    assert (run_dir(b) / "neptune" / "offline").is_dir() and sorted(p.name for p in b.iterdir()) == ["cfg_2a"]


def test_wandb_offline_run_read_back_from_its_files(tiny_data, tmp_path):
    """In train.py processes of their own: W&B keeps temp folders and a service until its process exits."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    printed = ""
    for extra in (["--stop_after_epochs", "1"], ["--resume"]):
        res = subprocess.run([sys.executable, str(ROOT / "train.py"),
                              *train_args(tiny_data, out, "--epochs", "3", "--tracker", "wandb", *extra)],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp)})
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        printed += res.stdout
    assert printed.count("wandb: no W&B API key, so offline: run 'cfg_2a/fold0/seed1' logged to ") == 2
    folder = run_dir(out)
    wb = wandb_offline_run(folder, tmp)
    state = json.loads((folder / "tracking.json").read_text())["wandb"]
    assert len(wb["sessions"]) == 2 and set(wb["ids"]) == {state["id"]}  # the resume continues the same W&B run
    assert set(wb["names"]) == {"cfg_2a/fold0/seed1"}
    cfg = json.loads((folder / "config.json").read_text())
    assert {k: wb["config"][k] for k in cfg} == {k: param_text(v) if isinstance(v, (list, dict)) else v
                                                 for k, v in cfg.items()}
    assert (wb["config"]["run/world_size"], wb["config"]["run/device"]) == (1, "cpu")
    metrics = pd.read_csv(folder / "metrics.csv")
    for key in EPOCH_METRICS:
        rows = metrics[metrics[key].notna()]
        assert wb["history"].get(key, {}) == dict(zip(rows["step"].tolist(), rows[key].tolist())), key
    assert sorted(wb["history"]["train/loss"]) == metrics["step"].tolist()
    for name in ARTIFACTS:
        assert (wb["files"] / name).read_bytes() == (folder / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == ["cfg_2a"]


def test_ddp_only_rank_0_tracks(tiny_data, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--log-dir", str(tmp_path / "torchrun_logs"), str(ROOT / "train.py"),
                          *train_args(tiny_data, out, "--epochs", "1")], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.count("mlflow: run 'cfg_2a/fold0/seed1'") == 1
    client, runs = mlflow_runs(local_store(out), out)
    assert len(runs) == 1
    check_mlflow_run(client, runs[0], run_dir(out), tmp_path / "dl", world_size=2)


def test_the_blend_is_its_own_run(tmp_path):
    from test_blend import known_problem, write_runs

    configs = ["cfg_1", "cfg_2a", "cfg_3"]
    X, y, _, _ = known_problem(n=400)
    write_runs(tmp_path, X, y, configs)
    out = tmp_path / "out"
    report = blend.blend_runs(out, tmp_path / "data", configs, epochs=20, log=lambda *a: None)
    client, (run,) = mlflow_runs(local_store(out), out)
    assert (run.info.run_name, run.info.status, run.data.tags["kind"]) == ("blend", "FINISHED", "blend")
    saved = json.loads((out / blend.BLEND_FILE).read_text())
    m = run.data.metrics
    assert {cfg: m[f"weight/{cfg}"] for cfg in configs} == saved["weights"]
    assert [m[f"bias/{col}"] for col in saved["label_cols"]] == saved["bias"]
    assert {cfg: m[f"oof_kl/{cfg}"] for cfg in configs} == report["oof_kl"]
    assert m["blend_oof_kl"] == report["blend_oof_kl"] and m["prior_kl"] == report["prior_kl"]
    assert run.data.params["configs"] == ",".join(configs) and run.data.params["n_rows"] == "400"
    plot = Path(blend.BLEND_FILE).stem + "_kl.png"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {blend.BLEND_FILE, plot}

    blend.blend_runs(out, tmp_path / "data", configs, epochs=20, out=out / "b.json", log=lambda *a: None, tracker="none")
    assert len(mlflow_runs(local_store(out), out)[1]) == 1

"""MLflow against a real tracking server: `mlflow server` on 127.0.0.1 (a free port, a file store and an
artifact folder in the test's temp folder), started here, waited for (at most 120 s) and stopped by its
process id at the end. Runs are read back through MLflow's client over HTTP."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from inference import blend
from test_tracking import (ENV_PREFIXES, check_mlflow_run, free_port, mlflow_runs, restore_env, run_dir, run_ok,
                           train_args)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    (root / "tmp").mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", str(root / "store"),
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "TMPDIR": str(root / "tmp")})
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}): {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server not up after 120 s: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield uri
    finally:
        # the server and the uvicorn worker it starts share the process group that start_new_session made
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture(autouse=True)
def server_env(mlflow_server):
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
        del os.environ[key]
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    yield
    restore_env(saved)


def test_server_run_equals_its_folder_and_a_resume_is_still_one_run(tiny_data, tmp_path, mlflow_server, capsys):
    out = tmp_path / "out"
    run_ok(train_args(tiny_data, out, "--epochs", "3", "--stop_after_epochs", "1"))
    client, runs = mlflow_runs(mlflow_server, out)
    assert [r.info.status for r in runs] == ["KILLED"]
    run_ok(train_args(tiny_data, out, "--epochs", "3", "--resume"))
    printed = capsys.readouterr().out
    assert printed.count(f"mlflow: run 'cfg_2a/fold0/seed1' at {mlflow_server}, experiment '{out.resolve()}'") == 2
    assert "warning" not in printed
    client, runs = mlflow_runs(mlflow_server, out)
    state = json.loads((run_dir(out) / "tracking.json").read_text())["mlflow"]
    assert [r.info.run_id for r in runs] == [state["run_id"]] and state["where"] == mlflow_server
    check_mlflow_run(client, runs[0], run_dir(out), tmp_path / "dl")  # artifacts downloaded from the server
    assert sorted(p.name for p in out.iterdir()) == ["cfg_2a"]  # no local store beside the outputs


def test_the_blend_logs_its_run_to_the_server(tmp_path, mlflow_server):
    from test_blend import known_problem, write_runs

    configs = ["cfg_1", "cfg_5a"]
    X, y, _, _ = known_problem(n=300, m=2)
    write_runs(tmp_path, X, y, configs)
    report = blend.blend_runs(tmp_path / "out", tmp_path / "data", configs, epochs=10, log=lambda *a: None)
    client, (run,) = mlflow_runs(mlflow_server, tmp_path / "out")
    assert run.info.run_name == "blend" and run.data.metrics["blend_oof_kl"] == report["blend_oof_kl"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {blend.BLEND_FILE, "blend_weights_kl.png"}

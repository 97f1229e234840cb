"""./run_train.sh --slurm on a real one-node SLURM cluster (munged + slurmctld + slurmd started here):
a demo-sized sweep with its blend job, then a task cancelled mid-run that resumes when the kept array
script is submitted again, while its finished neighbour is not trained twice; and the multi-node DDP
script on this one node. Skipped, saying why, where SLURM is not installed."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import LocalSlurm, missing_programs

from configs.demo import demo_fields, demo_overrides
from utils import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
MISSING = missing_programs()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"SLURM is not installed ({', '.join(MISSING)} not found; "
                                                      f".ci/run installs slurm-wlm and munge)")


@pytest.fixture(scope="module")
def cluster():
    slurm = LocalSlurm(cpus=2)
    try:
        yield slurm.start()
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny synthetic data in the Kaggle layout, folded and filtered (as the demo makes it)."""
    d = tmp_path_factory.mktemp("slurm_data")
    for script, *args in (("make_synthetic_data.py", "--out", d, "--n-patients", "24", "--n-test", "2", "--force"),
                          ("make_folds.py", "--data-dir", d, "--force"), ("filter_train.py", "--data-dir", d)):
        subprocess.run([sys.executable, f"scripts/{script}", *map(str, args)], cwd=ROOT, check=True,
                       capture_output=True, timeout=300)
    return d


def submit(cluster, out, data, *sweep_args, train_args=()):
    """./run_train.sh --slurm (CPU tasks, 2 at a time); returns (array job id, blend job id or None, its output)."""
    cmd = ["bash", "run_train.sh", "--slurm", "--gpus-per-run", "0", "--cpus-per-run", "1", "--max-parallel", "2",
           "--time", "0:15:00", *sweep_args, "--", "--data_dir", str(data), "--output_dir", str(out), *train_args]
    res = subprocess.run(cmd, cwd=ROOT, env={**cluster.env, "PYTHON": sys.executable}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    found = (re.search(rf"^{kind} job (\d+)", res.stdout, re.M) for kind in ("array", "blend"))
    array, blend = (m.group(1) if m else None for m in found)
    return array, blend, res.stdout


def sbatch(cluster, *args) -> str:
    res = cluster.run("sbatch", "--parsable", *map(str, args))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def left_running(marker: str) -> list[str]:
    """Command lines of processes that mention `marker` (an output folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


def test_sweep_as_job_array_then_blend(cluster, data, tmp_path):
    out = tmp_path / "out"
    array, blend, text = submit(cluster, out, data, "--configs", "cfg_2a,cfg_2b", "--folds", "0,1,2,3",
                                "--seeds", "1001", train_args=demo_overrides("cfg_2a", epochs=1, max_train_rows=16))
    assert "8 run(s)" in text and "at most 2 at a time" in text and f"task {array}_7: cfg_2b fold 3 seed 1001" in text
    assert "#SBATCH --array=0-7%2" in (out / "slurm" / "train_array.sbatch").read_text()
    cluster.wait(array, blend, timeout=420)
    blend_log = (out / "logs" / "slurm" / f"blend_{blend}.out").read_text()
    assert cluster.states(array) == ["COMPLETED"] * 8, cluster.logs()
    assert cluster.states(blend) == ["COMPLETED"], blend_log
    for cfg in ("cfg_2a", "cfg_2b"):
        for fold in range(4):
            assert ckpt.is_finished(ckpt.run_dir(out, cfg, fold, 1001))
            assert "done:" in (out / "logs" / f"{cfg}_fold{fold}_seed1001.log").read_text()
    assert "check: 8 of 8 run(s) finished" in blend_log and (out / "blend_weights.json").is_file()
    assert not left_running(str(out))


def test_cancelled_task_resumes_when_the_array_is_submitted_again(cluster, data, tmp_path):
    out = tmp_path / "out"
    over = demo_overrides("cfg_2a", epochs=5, max_train_rows=48)  # mdl_2: 3 epochs of 6 steps
    array, blend, _ = submit(cluster, out, data, "--configs", "cfg_2a", "--folds", "0,1", "--seeds", "1001",
                             train_args=over)
    slow = ckpt.run_dir(out, "cfg_2a", 1, 1001)  # task 1
    end = time.monotonic() + 240
    while not (slow / ckpt.RESUME_FILE).is_file():  # the first epoch's resume state
        assert time.monotonic() < end and cluster.active(f"{array}_1"), cluster.logs()
        time.sleep(0.1)
    assert cluster.run("scancel", f"{array}_1").returncode == 0
    cluster.wait(array, blend, timeout=300)
    assert sorted(cluster.states(array)) == ["CANCELLED", "COMPLETED"]
    assert ckpt.run_state(slow) == ckpt.INTERRUPTED and not left_running(str(out))
    # the blend job ran (afterany), named the cancelled task's run and stopped before blending
    blend_log = (out / "logs" / "slurm" / f"blend_{blend}.out").read_text()
    assert cluster.states(blend) == ["FAILED"]
    assert f"NOT FINISHED: cfg_2a fold 1 seed 1001 (interrupted); task {array}_1 ended with:" in blend_log
    assert "CANCELLED" in blend_log
    assert "no blend on a partial set" in blend_log and not (out / "blend_weights.json").exists()

    done = ckpt.run_dir(out, "cfg_2a", 0, 1001) / ckpt.CHECKPOINT_FILE
    stamp = done.stat().st_mtime_ns
    array2 = sbatch(cluster, out / "slurm" / "train_array.sbatch")  # the kept script, as it is
    blend2 = sbatch(cluster, f"--dependency=afterany:{array2}", out / "slurm" / "blend.sbatch")
    cluster.wait(array2, blend2, timeout=300)
    assert cluster.states(array2) == ["COMPLETED"] * 2 and cluster.states(blend2) == ["COMPLETED"], cluster.logs()
    assert done.stat().st_mtime_ns == stamp  # the finished run was not trained again
    assert "already finished, not trained again" in (out / "logs" / "slurm" / f"train_{array2}_0.out").read_text()
    log = (out / "logs" / "cfg_2a_fold1_seed1001.log").read_text()
    assert f"\n=== sweep task {array2}_1 on" in log and "was interrupted" in log and "resuming" in log
    assert ckpt.is_finished(slow) and (out / "blend_weights.json").is_file()
    assert len((slow / "metrics.csv").read_text().strip().splitlines()) == 1 + 3  # epochs 1-3, each once


def test_a_run_longer_than_its_time_limit_finishes_over_requeued_slots_and_equals_the_uninterrupted_run(
        cluster, data, tmp_path):
    """--time 2 with the warning 60 s before: SLURM sends SIGUSR1 60-90 s into each slot (its time-limit checks
    run every 30 s); train.py saves its place inside the epoch, the task requeues itself, and the next slot goes
    on. 20 epochs of 16 steps take 100-200 s on these 2 cores: two slots or more. The result equals one uninterrupted train.py."""
    run_args = [*demo_overrides("cfg_2a", epochs=3, max_train_rows=128), "--epochs", "20", "--eval_epochs", "20"]
    reference = subprocess.Popen([sys.executable, "train.py", "-C", "cfg_2a", "--fold", "-1", "--seed", "1001",
                                  *run_args, "--data_dir", str(data), "--output_dir", str(tmp_path / "ref")],
                                 cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)  # as the task runs it: one CPU, one thread
    out = tmp_path / "out"
    array, blend, text = submit(cluster, out, data, "--configs", "cfg_2a", "--folds", "-1", "--seeds", "1001",
                                "--time", "2", "--signal-grace", "60", train_args=run_args)
    assert blend is None and "#SBATCH --signal=B:USR1@60" in (out / "slurm" / "train_array.sbatch").read_text()
    blend = sbatch(cluster, f"--dependency=afterany:{array}", "--chdir", ROOT, "--wrap", f"{sys.executable} -m sweep check --configs "
                   f"cfg_2a --folds -1 --seeds 1001 --output-dir {out}", "--output", tmp_path / "after.out")
    cluster.wait(array, blend, timeout=900)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-2000:]
    task_out = (out / "logs" / "slurm" / f"train_{array}_0.out").read_text()  # every slot's, appended
    assert cluster.states(array) == ["COMPLETED"], task_out + cluster.logs()
    slots = task_out.count("=== sweep task")
    assert slots >= 2 and task_out.count("saved its place before the time limit; requeueing") == slots - 1, task_out
    log = (out / "logs" / "cfg_2a_fold-1_seed1001.log").read_text()
    assert log.count("stopped by SIGTERM") == slots - 1 and "(requeued 1x)" in log, log
    run, ref = (ckpt.run_dir(d, "cfg_2a", -1, 1001) for d in (out, tmp_path / "ref"))
    assert ckpt.is_finished(run)
    assert (run / "val_logits.csv").read_bytes() == (ref / "val_logits.csv").read_bytes()
    assert (pd.read_csv(run / "metrics.csv")["train_loss"] == pd.read_csv(ref / "metrics.csv")["train_loss"]).all()
    # a job after the array (afterany, as the blend job) starts only when the requeued task has finished
    assert "check: 1 of 1 run(s) finished" in (tmp_path / "after.out").read_text()


def test_one_array_gives_each_config_its_own_overrides(cluster, data, tmp_path):
    """--overrides: one array over two configs; each task's run trains with its config's entry of the file as
    it was at submission (the file is broken right after), and the arguments after -- win over it."""
    out, over = tmp_path / "out", tmp_path / "sizes.json"
    over.write_text(json.dumps({"*": demo_fields("cfg_2a", epochs=1, max_train_rows=16),
                                "cfg_2a": {"batch_size": 4}, "cfg_2b": {"batch_size": 2, "epochs": 2}}))
    array, blend, text = submit(cluster, out, data, "--configs", "cfg_2a,cfg_2b", "--folds", "-1", "--seeds", "5",
                                "--overrides", str(over), train_args=["--max_train_rows", "8"])
    over.write_text("{ edited after submission")
    assert blend is None and "2 run(s)" in text  # fold -1 only: no blend job
    cluster.wait(array, timeout=300)
    assert cluster.states(array) == ["COMPLETED"] * 2, cluster.logs()
    saved = {c: json.loads((ckpt.run_dir(out, c, -1, 5) / "config.json").read_text()) for c in ("cfg_2a", "cfg_2b")}
    assert {c: (s["batch_size"], s["epochs"], s["max_train_rows"], s["sq_dim"]) for c, s in saved.items()} == {
        "cfg_2a": (4, 1, 8, 16), "cfg_2b": (2, 2, 8, 16)}
    assert all(ckpt.is_finished(ckpt.run_dir(out, c, -1, 5)) for c in saved) and not left_running(str(out))


def test_ddp_script_on_one_node(cluster, data, tmp_path):
    """scripts/slurm_ddp.sbatch: srun + torchrun (c10d rendezvous), here one node with two CPU processes."""
    out = tmp_path / "out"
    args = ["cfg_2a", "0", "7", "--data_dir", data, "--output_dir", out, *demo_overrides("cfg_2a", 3, 16)]
    env = {**cluster.env, "PYTHON": sys.executable, "NPROC_PER_NODE": "2"}
    res = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", f"--output={tmp_path}/ddp.out",
                          "scripts/slurm_ddp.sbatch", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cluster.wait(res.stdout.strip(), timeout=300)
    text = (tmp_path / "ddp.out").read_text()
    assert cluster.states(res.stdout.strip()) == ["COMPLETED"], text
    assert "1 node(s) x 2 process(es), rendezvous" in text and "device cpu x 2" in text
    assert ckpt.is_finished(ckpt.run_dir(out, "cfg_2a", 0, 7)) and not left_running(str(out))

"""Real faults in the middle of a run: SIGKILL at each point where train.py writes a file, and a full disk
while it writes its resume state. After each, the next start (the sweep, as ./run_train.sh or a requeued
SLURM task starts it) completes the run, and the result equals the run that met no fault."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_data
from utils import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
RUN = ["-C", "cfg_2a", "--fold", "0", "--seed", "6", "--epochs", "2", "--frontend_filters", "8", "--sq_dim", "16",
       "--sq_heads", "2", "--sq_layers", "1", "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off"]

# Runs train.py (arguments after the first three) and SIGKILLs itself around the nth os.replace / os.link onto
# a file of that name (the atomic writes of utils/io.py and the claim of utils/claim.py).
KILLER = """
import os, runpy, signal, sys
name, nth, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = [0]
def wrap(real):
    def call(src, dst, *a, **k):
        hit = os.path.basename(os.fspath(dst)) == name
        count[0] += hit
        if hit and count[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *a, **k)
        if hit and count[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    return call
os.replace, os.link = wrap(os.replace), wrap(os.link)
sys.argv = ["train.py", *sys.argv[4:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Data, and the run that met no fault (a train.py process with one thread, as every start here)."""
    root = tmp_path_factory.mktemp("faults")
    data = write_tiny_data(root / "data")
    subprocess.run([sys.executable, "train.py", *RUN, "--data_dir", data, "--output_dir", root / "ref"], cwd=ROOT,
                   env=ENV, check=True, capture_output=True, timeout=600)
    return data, ckpt.run_dir(root / "ref", "cfg_2a", 0, 6)


def sweep(data, out) -> subprocess.CompletedProcess:
    """The next start: ./run_train.sh for this one run."""
    return subprocess.run(["bash", "run_train.sh", "--configs", "cfg_2a", "--folds", "0", "--seeds", "6", "--",
                           *RUN[6:], "--data_dir", str(data), "--output_dir", str(out)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


POINTS = [(".seed6.claim", 1, "after"), ("config.json", 1, "after"), ("last_state.pth", 1, "before"),
          ("last_state.pth", 1, "after"), ("metrics.csv", 2, "after"), ("val_logits.csv", 1, "after"),
          ("learning_curve.png", 1, "after"), ("checkpoint.pth", 1, "before"), ("checkpoint.pth", 1, "after")]


@pytest.mark.parametrize("name,nth,when", POINTS, ids=[f"{w}-{n}{k}" for n, k, w in POINTS])
def test_sigkill_at_a_write_point_then_the_next_start_completes_the_run(reference, tmp_path, name, nth, when):
    data, ref = reference
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILLER, name, str(nth), when, *RUN, "--data_dir", str(data),
                             "--output_dir", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stdout[-1500:] + killed.stderr[-1500:]  # it did reach that write
    res = sweep(data, out)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = ckpt.run_dir(out, "cfg_2a", 0, 6)
    assert ckpt.is_finished(run) and not (run / ckpt.RESUME_FILE).exists()
    assert (run / "val_logits.csv").read_bytes() == (ref / "val_logits.csv").read_bytes()
    assert not [p for p in out.rglob("*.tmp")] and not (run.parent / ".seed6.claim").exists()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_full_disk_while_saving_the_resume_state_is_one_line_and_keeps_the_previous_state(reference, tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is made with a small tmpfs, which needs root and mount(8)")
    data, ref = reference
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        out = small / "out"
        args = [sys.executable, "train.py", *RUN, "--epochs", "3", "--data_dir", str(data), "--output_dir", str(out)]
        first = subprocess.run([*args, "--stop_after_epochs", "1"], cwd=ROOT, env=ENV, capture_output=True,
                               text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-2000:]
        state = ckpt.run_dir(out, "cfg_2a", 0, 6) / ckpt.RESUME_FILE
        before, size = sha(state), state.stat().st_size
        free = shutil.disk_usage(small).free
        with open(small / "filler", "wb") as fh:  # leave less room than one resume state
            fh.write(b"\0" * (free - size // 2))
        full = subprocess.run([*args, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert full.returncode == 2, full.stdout[-2000:] + full.stderr[-2000:]
        errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
        assert errors == [f"error: cannot write {state}: No space left on device (the previous {state.name} is "
                          f"unchanged)"] and "Traceback" not in full.stderr
        assert sha(state) == before and ckpt.run_state(state.parent) == ckpt.INTERRUPTED
        assert not list(state.parent.glob("*.tmp"))
        (small / "filler").unlink()
        again = subprocess.run([*args, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        whole = tmp_path / "whole"  # the same 3 epochs never interrupted
        subprocess.run([*args[:-2], "--output_dir", str(whole)], cwd=ROOT, env=ENV, check=True, capture_output=True,
                       timeout=600)
        assert ((state.parent / "val_logits.csv").read_bytes()
                == (ckpt.run_dir(whole, "cfg_2a", 0, 6) / "val_logits.csv").read_bytes())
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


FORCE_POINTS = [(".seed6.old", 1, "after"), ("seed6", 1, "after")]


@pytest.mark.parametrize("name,nth,when", FORCE_POINTS, ids=["old-run-set-aside", "new-run-in-place"])
def test_sigkill_while_a_force_run_replaces_the_old_one_then_the_next_start_completes_it(reference, tmp_path, name,
                                                                                        nth, when):
    """--force over a 1-epoch run with the 2-epoch reference settings, killed inside the promotion: the next
    start promotes the finished new run (equal to the reference) and removes the old one."""
    data, ref = reference
    out = tmp_path / "out"
    subprocess.run([sys.executable, "train.py", *RUN, "--epochs", "1", "--data_dir", data, "--output_dir", out],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
    killed = subprocess.run([sys.executable, "-c", KILLER, name, str(nth), when, *RUN, "--force", "--data_dir",
                             str(data), "--output_dir", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stdout[-1500:] + killed.stderr[-1500:]
    res = sweep(data, out)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = ckpt.run_dir(out, "cfg_2a", 0, 6)
    assert (run / "val_logits.csv").read_bytes() == (ref / "val_logits.csv").read_bytes()
    assert sorted(p.name for p in run.parent.iterdir()) == ["seed6"]  # no staging, no old run, no claim


def test_a_failed_read_inside_an_atomic_write_stays_the_reads_own_error(tmp_path):
    """Only the write's own failures become WriteError: a source that cannot be read is named as itself."""
    from utils.io import WriteError, atomic_write

    def copy_missing(tmp):
        Path(tmp).write_bytes((tmp_path / "missing.eeg").read_bytes())

    with pytest.raises(FileNotFoundError, match="missing.eeg"):
        atomic_write(tmp_path / "cache.npy", copy_missing)
    (tmp_path / "cache.npy").mkdir()
    with pytest.raises(WriteError, match=r"cannot write .*cache.npy: Is a directory \(nothing was written\)"):
        atomic_write(tmp_path / "cache.npy", lambda tmp: Path(tmp).write_text("x"))
    assert not list(tmp_path.glob(".*.tmp"))


"""One claim per run (utils/claim.py): processes racing for a claim or for a stale claim's takeover get
exactly one holder; two sweeps on one output folder train every run once; a second train.py on a held run
stops in one line and touches nothing; a dead or hung holder's claim is taken over with one line; logs are
appended per attempt; a finished --force run whose process died before promoting it is promoted (never
deleted); temporary files stranded by SIGKILL are removed when the run or the recording is next touched."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import train
from data.eeg_store import EEGStore
from sweep import runs as sweep
from utils import checkpoint as ckpt
from utils import claim
from utils.io import run_cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off", "--grad_accumulation", "1",
         "--max_train_rows", "2", "--max_val_rows", "1"]


def train_args(data, out, *extra):
    return ["-C", "cfg_2a", "--fold", "0", "--data_dir", str(data), "--output_dir", str(out), *SMALL, *extra]


def python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


HOLDER = """
import os, sys, time
sys.path.insert(0, os.getcwd())
from utils.claim import Claim
from utils.io import atomic_write
path, beat, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
claim = Claim(path, heartbeat_s=beat).acquire()
if mode == "write":  # hold the run, half-way through an atomic write of its checkpoint
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a checkpoint")
        print("ready", flush=True)
        time.sleep(600)
    atomic_write(sys.argv[4], write)
elif mode == "exit":  # end without releasing (no atexit), as a crashed process does
    print("ready", flush=True)
    os._exit(0)
else:  # hold until the heartbeat finds that the claim is no longer this process's (it says so), then release
    print("ready", flush=True)
    claim._thread.join()
    claim.release()
    print("lost", flush=True)
"""


@contextlib.contextmanager
def hold(path, mode="hold", *extra, beat=claim.HEARTBEAT_S):
    """A process holding the claim at `path` (see HOLDER); killed at the end if a failed test left it running."""
    proc = python(HOLDER, path, beat, mode, *extra)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=60)
    return out, err


# --- the claim itself -------------------------------------------------------------------------------------
RACER = """
import os, sys, time
sys.path.insert(0, os.getcwd())
from utils import claim
from utils.claim import Claim, ClaimHeld
if os.environ.get("SLOW_READ"):  # a slow filesystem: what a process read may be outdated when it acts on it
    read = claim.read
    claim.read = lambda path: (read(path), time.sleep(0.2))[0]
print("waiting", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    Claim(sys.argv[1], say=lambda msg: print("said:", msg, flush=True)).acquire()
except ClaimHeld:
    print("held", flush=True)
    sys.exit(0)
print("got", flush=True)
time.sleep(3)  # hold it while the others try
os._exit(0)  # leave it behind, as a crashed process does: the next round takes it over
"""


def race(path: Path, go: Path, n: int = 8, **env) -> list[str]:
    procs = [python(RACER, path, go, env={**os.environ, **env}) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline() == "waiting\n"
    go.touch()
    outs = [finish(p)[0] for p in procs]
    go.unlink()
    return outs


def test_racing_processes_get_one_claim_and_one_takeover(tmp_path):
    path = tmp_path / "run" / ".seed1.claim"
    outs = race(path, tmp_path / "go")
    assert sum(o.endswith("got\n") for o in outs) == 1 and sum(o == "held\n" for o in outs) == 7, outs
    dead = claim.read(path)
    assert dead.stale_reason() == f"process {dead.pid} on {claim.HOST} is gone"
    # eight processes find the dead holder's claim at once, on a slow filesystem: one takes it over, with one line
    outs = race(path, tmp_path / "go", SLOW_READ="1")
    assert sum(o.endswith("got\n") for o in outs) == 1 and sum(o == "held\n" for o in outs) == 7, outs
    said = [ln for o in outs for ln in o.splitlines() if ln.startswith("said:")]
    assert len(said) == 1 and f"took over the stale claim {path} of host {claim.HOST} pid {dead.pid}" in said[0]
    assert claim.read(path).pid != dead.pid
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary or guard file left


def test_a_hung_holder_is_taken_over_after_its_heartbeat_stops(tmp_path, capsys):
    out = tmp_path / "out"
    run = sweep.make_runs(["cfg_2a"], [0], [3])[0]
    path = ckpt.claim_file(run.folder(out))
    with hold(path, beat=0.2) as holder:
        past = time.time() - 3600
        os.utime(path, (past, past))
        time.sleep(1.0)
        assert time.time() - path.stat().st_mtime < 1.0  # the heartbeat refreshed it
        assert sweep.unfinished([run], out) == []
        assert f"skip (held by host {claim.HOST} pid {holder.pid}" in capsys.readouterr().err
        holder.send_signal(signal.SIGSTOP)  # hung: alive, but no more heartbeats
        while claim._proc_stat(holder.pid)[0] != "T":
            time.sleep(0.01)
        past = time.time() - claim.STALE_S - 60
        os.utime(path, (past, past))
        assert sweep.unfinished([run], out) == [run]
        said = []
        mine = claim.Claim(path, say=said.append).acquire()
        assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "no heartbeat for" in said[0], said
        holder.send_signal(signal.SIGCONT)
        out_text, err = finish(holder)
    assert out_text.splitlines() == ["lost"]  # it noticed, and its release left the new claim alone
    assert f"claim {path} of this process (pid {holder.pid}) was taken over by host {claim.HOST} pid {os.getpid()}" in err
    assert mine.is_mine()
    mine.release()
    assert not path.exists()


# --- train.py ---------------------------------------------------------------------------------------------
def test_a_held_run_stops_a_second_train_and_a_dead_holders_claim_is_taken_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    base = train_args(tiny_data, out, "--seed", "7", "--epochs", "2")
    assert run_cli(train.main, base + ["--stop_after_epochs", "1"]) == 0  # an interrupted run
    d = ckpt.run_dir(out, "cfg_2a", 0, 7)
    assert not ckpt.claim_file(d).exists()  # released at the end
    with hold(ckpt.claim_file(d), "write", d / ckpt.CHECKPOINT_FILE) as holder:  # mid-way through a write
        (tmp,) = d.glob(".checkpoint.pth.*.tmp")
        past = time.time() - 3600
        os.utime(tmp, (past, past))  # old enough for any clean-up: a live holder's files are still not touched
        before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
        capsys.readouterr()
        assert run_cli(train.main, base + ["--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is being trained by another process: " in err[0], err
        assert f"host {claim.HOST} pid {holder.pid}, since " in err[0] and str(d) in err[0]
        assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before
        assert sweep.unfinished(sweep.make_runs(["cfg_2a"], [0], [7]), out) == []
        assert f"skip (held by host {claim.HOST} pid {holder.pid}" in capsys.readouterr().err
        assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before
        holder.kill()  # SIGKILL mid-write: a dead holder's claim, its temporary file stranded
        finish(holder)
    assert tmp.exists() and ckpt.run_state(d) == ckpt.INTERRUPTED
    assert run_cli(train.main, base + ["--resume"]) == 0
    printed = capsys.readouterr().out
    took = [ln for ln in printed.splitlines() if "stale claim" in ln]
    assert len(took) == 1 and f"process {holder.pid} on {claim.HOST} is gone" in took[0], printed
    assert ckpt.is_finished(d) and not list(d.glob(".*.tmp")) and not ckpt.claim_file(d).exists()
    assert sorted(p.name for p in d.parent.iterdir()) == ["seed7"]


def test_sigterm_releases_the_claim(tiny_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "train.py", *train_args(tiny_data, out, "--seed", "2", "--epochs", "50")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = ckpt.claim_file(ckpt.run_dir(out, "cfg_2a", 0, 2))
    t0 = time.time()
    while not (path.exists() and claim.read(path).pid == proc.pid):
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert not path.exists()


CRASH_BEFORE_PROMOTE = """
import os, sys
sys.path.insert(0, os.getcwd())
import train
from utils import checkpoint
from utils.io import run_cli
checkpoint.promote = lambda staging, final: os._exit(9)  # dies between the --force run's finish and its promotion
sys.exit(run_cli(train.main, sys.argv[1:]))
"""


def test_a_finished_force_run_left_in_staging_is_promoted_never_deleted(tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = train_args(tiny_data, out, "--seed", "5", "--epochs", "1")
    assert run_cli(train.main, base) == 0
    d = ckpt.run_dir(out, "cfg_2a", 0, 5)
    staging = ckpt.staging_dir(d)
    old = (d / ckpt.CHECKPOINT_FILE).read_bytes()
    proc = python(CRASH_BEFORE_PROMOTE, *base, "--force", "--lr", "0.01")
    finish(proc)
    assert proc.returncode == 9 and ckpt.is_finished(staging) and (d / ckpt.CHECKPOINT_FILE).read_bytes() == old
    new = (staging / ckpt.CHECKPOINT_FILE).read_bytes()
    assert new != old and claim.read(ckpt.claim_file(d)).pid == proc.pid  # its claim left behind, pid dead
    for copy in ("out2", "out3"):
        shutil.copytree(out, tmp_path / copy)
    capsys.readouterr()

    # the sweep's state check promotes it: the run is finished, with the new checkpoint
    run = sweep.make_runs(["cfg_2a"], [0], [5])
    assert sweep.unfinished(run, out) == []
    err = capsys.readouterr().err
    assert err.count("took over the stale claim") == 1 and err.count(f"promoted the finished --force run {staging}") == 1
    assert f"skip (finished): {run[0]}" in err
    assert (d / ckpt.CHECKPOINT_FILE).read_bytes() == new and '"lr": 0.01' in (d / "config.json").read_text()
    assert sorted(p.name for p in d.parent.iterdir()) == ["seed5"]  # no staging, no old run, no claim

    # so does train.py's next start (which then refuses to train a finished run)
    d2 = ckpt.run_dir(tmp_path / "out2", "cfg_2a", 0, 5)
    assert run_cli(train.main, train_args(tiny_data, tmp_path / "out2", "--seed", "5", "--epochs", "1")) == 2
    text = capsys.readouterr()
    assert f"promoted the finished --force run {ckpt.staging_dir(d2)}" in text.out and "finished run" in text.err
    assert (d2 / ckpt.CHECKPOINT_FILE).read_bytes() == new and sorted(p.name for p in d2.parent.iterdir()) == ["seed5"]

    # where it cannot be promoted, it is named and kept, even by --force
    def no_promote(staging, final):
        raise PermissionError(13, "Permission denied", str(final))

    monkeypatch.setattr(ckpt, "promote", no_promote)
    d3 = ckpt.run_dir(tmp_path / "out3", "cfg_2a", 0, 5)
    args3 = train_args(tiny_data, tmp_path / "out3", "--seed", "5", "--epochs", "1", "--force")
    assert run_cli(train.main, args3) == 2
    text = capsys.readouterr()
    assert f"the finished --force run {ckpt.staging_dir(d3)} could not replace {d3}" in text.out
    assert len(text.err.strip().splitlines()) == 1 and "holds a finished --force run" in text.err
    assert (ckpt.staging_dir(d3) / ckpt.CHECKPOINT_FILE).read_bytes() == new
    assert (d3 / ckpt.CHECKPOINT_FILE).read_bytes() == old and not ckpt.claim_file(d3).exists()


# --- the sweep ----------------------------------------------------------------------------------------------
FAKE_TRAIN = """#!{python}
# stands in for `python train.py -C cfg --fold f --seed s ... --output_dir d`: claims the run as train.py does
# (utils.checkpoint.claim_to_train), records that it trained it, writes a complete checkpoint; any other call
# (the sweep itself: -m sweep) goes to the real python
import os, sys, time
if sys.argv[1:2] != ["train.py"]:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
sys.path.insert(0, os.getcwd())
from utils import checkpoint as ckpt
from utils.io import atomic_write_text
args = sys.argv[2:]
cfg, fold, seed, out = args[1], int(args[3]), int(args[5]), args[args.index("--output_dir") + 1]
final = ckpt.run_dir(out, cfg, fold, seed)
why = ckpt.claim_to_train(final)
if why is None and ckpt.is_finished(final):
    why = f"{{final}} holds a finished run"
if why:
    print(f"error: {{why}}", file=sys.stderr)
    sys.exit(2)
with open(os.environ["CALLS"], "a") as fh:
    fh.write(f"{{cfg}} {{fold}} {{seed}}\\n")
time.sleep(0.3)
if str(seed) == os.environ.get("FAIL_SEED"):
    print("Traceback: boom")
    sys.exit(3)
atomic_write_text(final / "checkpoint.pth", open(os.environ["CKPT"], "rb").read())
"""


def fake_env(tmp_path, **extra) -> dict:
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAIN.format(python=sys.executable))
    fake.chmod(0o755)
    ckpt.save({"epoch": 0}, tmp_path / "complete.pth")
    return {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls.txt"), "CKPT": str(tmp_path / "complete.pth"),
            **extra}


def sweep_proc(env, *args) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "run_train.sh"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_sweeps_on_one_output_folder_train_every_run_once(tmp_path):
    out = tmp_path / "out"
    env = fake_env(tmp_path)
    procs = [sweep_proc(env, "--configs", "cfg_2a", "--output-dir", str(out)) for _ in range(2)]
    results = [finish(p) for p in procs]
    for p, (text, err) in zip(procs, results):
        assert p.returncode == 0 and "all runs finished" in text, err
    trained = Counter((tmp_path / "calls.txt").read_text().splitlines())
    runs = sweep.make_runs(["cfg_2a"])
    assert trained == Counter(f"{r.config} {r.fold} {r.seed}" for r in runs)  # each of the 16 once
    assert all(r.state(out) == ckpt.FINISHED and not ckpt.claim_file(r.folder(out)).exists() for r in runs)
    skipped = [ln for _, err in results for ln in err.splitlines() if ln.startswith("skip (")]
    assert len(skipped) >= 16, skipped  # each run skipped by one of the two sweeps (finished, or held)


def test_two_sweeps_of_real_train_runs_train_each_once(tiny_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    args = ["--configs", "cfg_2a", "--folds", "0", "--seeds", "1,2", "--data-dir", str(tiny_data), "--output-dir",
            str(out), "--", *SMALL, "--epochs", "1"]
    procs = [sweep_proc(env, *args) for _ in range(2)]
    results = [finish(p) for p in procs]
    for p, (text, err) in zip(procs, results):
        assert p.returncode == 0 and "all runs finished" in text, err
    for run in sweep.make_runs(["cfg_2a"], [0], [1, 2]):
        log = run.log(out).read_text()
        assert run.state(out) == ckpt.FINISHED and log.count("done: ") == 1 and log.count(" train / 1 val rows") == 1, log
    assert sum(ln.startswith("skip (") for _, err in results for ln in err.splitlines()) == 2


def test_each_attempt_is_appended_to_the_log_after_a_header(tmp_path):
    out = tmp_path / "out"
    first = sweep_proc(fake_env(tmp_path, FAIL_SEED="1002"), "--configs", "cfg_2a", "--folds", "0", "--output-dir", str(out))
    finish(first)
    assert first.returncode == 1
    second = sweep_proc(fake_env(tmp_path), "--configs", "cfg_2a", "--folds", "0", "--output-dir", str(out))
    text, err = finish(second)
    assert second.returncode == 0, err
    log = (out / "logs" / "cfg_2a_fold0_seed1002.log").read_text().splitlines()
    heads = [i for i, ln in enumerate(log) if ln.startswith(sweep.LOCAL_HEADER)]
    assert heads == [0, 2] and log[1] == "Traceback: boom", log
    assert log[0].endswith("cfg_2a fold 0 seed 1002 was not started") and f" on {claim.HOST} " in log[2]
    assert len((out / "logs" / "cfg_2a_fold0_seed1001.log").read_text().splitlines()) == 1  # trained once


# --- the recording cache --------------------------------------------------------------------------------------
KILLED_DECODE = """
import os, signal, sys, time
sys.path.insert(0, os.getcwd())
from data.eeg_store import EEGStore
store = EEGStore(sys.argv[1], sys.argv[2])
def decode_to(eeg_id, tmp):
    with open(tmp, "wb") as fh:
        fh.write(b"part of a decoded recording")
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    time.sleep(600)
store.decode_to = decode_to
store.build(1000)
"""


def test_a_killed_decodes_temporary_file_is_removed_when_the_recording_is_next_built(tiny_data, tmp_path):
    eegs, cache = tiny_data / "train_eegs", tmp_path / "cache"
    store = EEGStore(eegs, cache)
    killed = python(KILLED_DECODE, eegs, cache, "kill")
    finish(killed)
    assert killed.returncode == -signal.SIGKILL
    (stranded,) = store.cache_dir.glob(".1000_*.npy.*.tmp")
    past = time.time() - claim.STALE_S - 60
    os.utime(stranded, (past, past))
    live = python(KILLED_DECODE, eegs, cache, "live")  # another process decoding it right now
    try:
        assert live.stdout.readline() == "ready\n"
        (writing,) = set(store.cache_dir.glob(".1000_*.npy.*.tmp")) - {stranded}
        assert store.length(1000) == 200 * 60
        assert not stranded.exists() and writing.exists()  # the stranded file removed, the live writer's kept
    finally:
        live.kill()
        finish(live)
    writing.unlink()


@pytest.mark.parametrize("bad", ["", "{not json"])
def test_an_unreadable_claim_counts_as_live_until_its_heartbeat_is_stale(tmp_path, bad):
    path = tmp_path / ".seed1.claim"
    path.write_text(bad)  # e.g. made with O_EXCL by a process that died before writing into it
    with pytest.raises(claim.ClaimHeld, match="unreadable claim"):
        claim.Claim(path).acquire()
    past = time.time() - claim.STALE_S - 1
    os.utime(path, (past, past))
    said = []
    with claim.Claim(path, say=said.append) as c:
        assert c.is_mine() and len(said) == 1 and "no heartbeat for" in said[0]
    assert not path.exists()

"""The reproduction's runs, the state of each, and the one local runner.

The full reproduction is 9 configs x (folds 0-3 with seeds 1001, 1002 + fold -1 with seeds 2001-2008)
= 144 runs with fixed seeds (docs/solution.md §8; the values are in configs/ensemble.py). `make_runs` is
the only place that list is made; `run_state` of utils/checkpoint is the only rule for whether a run is
finished. The local runner (`run_jobs`: N train.py processes at a time, env vars per slot) serves
./run_train.sh (sweep/cli.py) and the demo; sweep/slurm.py turns the same list into a SLURM job array.

Two sweeps (or a sweep and a resubmitted array) on one output folder train each run once: train.py
claims its run (utils/claim.py), the sweep skips a run whose claim is live, saying who holds it, both
when it picks the runs and just before it starts each one, and a train.py that stopped because another
process claimed (or meanwhile finished) its run counts as skipped, not failed. Each attempt appends to
the run's log after a header line; a log is never truncated.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from configs.ensemble import CONFIGS, FOLD_SEEDS
from utils import checkpoint as ckpt
from utils import claim as claims
from utils.config import ConfigError, available_configs

ROOT = Path(__file__).resolve().parents[1]

TASK_HEADER = "=== sweep task"  # first line of each SLURM attempt in a run's log (the blend check quotes it)
LOCAL_HEADER = "=== sweep run"  # first line of each local attempt


# --- the runs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRun:
    config: str
    fold: int
    seed: int

    def __str__(self) -> str:
        return f"{self.config} fold {self.fold} seed {self.seed}"

    def folder(self, output_dir) -> Path:
        return ckpt.run_dir(ROOT / output_dir, self.config, self.fold, self.seed)

    def state(self, output_dir) -> str:
        """FINISHED / INTERRUPTED / NOT_STARTED, read now (utils.checkpoint.run_state)."""
        return ckpt.run_state(self.folder(output_dir))

    def log(self, output_dir) -> Path:
        return Path(output_dir) / "logs" / f"{self.config}_fold{self.fold}_seed{self.seed}.log"

    def holder(self, output_dir) -> claims.Holder | None:
        """The live process that holds this run's claim (a train.py training it), else None."""
        return claims.live_holder(ckpt.claim_file(self.folder(output_dir)))


def settle(run: SweepRun, output_dir, fix: bool = True) -> None:
    """What a process killed at a run's end left (utils/checkpoint.leftovers: a finished --force run in its
    staging folder, a finished run's resume state) is finished now under the run's claim
    (utils/checkpoint.claim_run), or named when that fails; with fix=False (a dry run) only named. A run
    another process holds is left to it."""
    final = run.folder(output_dir)
    left = ckpt.leftovers(final)
    if left is None:
        return
    if not fix:
        print(f"note: {run}: {left}; it is tidied when the run is next checked or started", file=sys.stderr)
        return
    try:
        ckpt.claim_run(final, say=lambda msg: print(msg, file=sys.stderr, flush=True)).release()
    except claims.ClaimHeld:
        pass
    except OSError as err:
        print(f"warning: {run}: {left}; the run cannot be claimed to tidy it: {err}", file=sys.stderr)


def busy(run: SweepRun, output_dir) -> str | None:
    """Why the sweep must not start `run` now: finished, or claimed by a live process; else None."""
    if run.state(output_dir) == ckpt.FINISHED:
        return "finished"
    holder = run.holder(output_dir)
    return f"held by {holder.describe()}" if holder else None


def check_configs(configs) -> list[str]:
    known = available_configs()
    for name in configs:
        if name not in known:
            raise ConfigError(f"unknown config '{name}' (no configs/{name}.py; available: {', '.join(known)})")
    return list(dict.fromkeys(configs))


def make_runs(configs=None, folds=None, seeds=None) -> list[SweepRun]:
    """The runs in a fixed order (config, fold, seed); by default the reproduction's 144.

    `folds` picks among 0-3 and -1 (in the order given); `seeds` replaces each fold's reference seeds,
    so the demo gets one run per config and fold with its own seed."""
    configs = check_configs(configs or CONFIGS)
    folds = list(FOLD_SEEDS) if folds is None else list(dict.fromkeys(folds))
    for fold in folds:
        if fold not in FOLD_SEEDS:
            raise ConfigError(f"bad fold {fold}: the folds are 0, 1, 2, 3 and -1 (all rows)")
    return [SweepRun(c, f, s) for c in configs for f in folds for s in (seeds or FOLD_SEEDS[f])]


def python_cmd() -> str:
    """The interpreter for train.py: $PYTHON, else this one."""
    return os.environ.get("PYTHON") or sys.executable


def train_argv(run: SweepRun, output_dir, extra=()) -> list[str]:
    """train.py's arguments for `run`, with --resume when it is interrupted (state read now)."""
    argv = ["train.py", "-C", run.config, "--fold", str(run.fold), "--seed", str(run.seed)]
    if run.state(output_dir) == ckpt.INTERRUPTED:
        argv.append("--resume")
    return argv + list(extra)


# --- the local runner -----------------------------------------------------------------------------
@dataclass
class Job:
    """One train.py run: where it logs (appended, after a header line per attempt), and how it starts
    (launcher: e.g. torchrun before train.py)."""
    run: SweepRun
    output_dir: str
    extra: list = field(default_factory=list)
    header: str | None = None  # the attempt's first line in the log (default: local_header())
    launcher: list = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.run.log(self.output_dir)

    def command(self) -> list[str]:
        return [python_cmd(), *self.launcher, *train_argv(self.run, self.output_dir, self.extra)]

    def local_header(self) -> str:
        return (f"{LOCAL_HEADER} on {socket.gethostname()} (sweep pid {os.getpid()}) at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {self.run} was {self.run.state(self.output_dir)}")


@dataclass
class Result:
    job: Job
    slot: int
    returncode: int
    seconds: float
    skipped: str | None = None  # why the run was not (or not fully) trained here: another process has it

    @property
    def ok(self) -> bool:
        return self.returncode == 0 or self.skipped is not None


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


STOP_WAIT_S = 300  # how long a stopped train.py may take to finish its step and save its resume state
_STARTED: set = set()  # the train.py processes running now (for `signal_running`)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; none elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def signal_running(signum: int) -> int:
    """Send `signum` to every train.py this process runs now (a SLURM task passing on the time-limit warning):
    under torchrun to its ranks, not to torchrun, which would SIGKILL them 30 s after passing it on; returns how
    many processes were signalled."""
    sent = 0
    for running in list(_STARTED):
        proc = running.proc
        if proc.poll() is not None:
            continue
        for pid in (children(proc.pid) if running.job.launcher else [proc.pid]):
            try:
                os.kill(pid, signum)
                sent += 1
            except ProcessLookupError:
                pass
    return sent


class _Running:
    """A started job: its process, and (tee) a thread copying its output to the log and the console."""

    def __init__(self, job: Job, slot: int, env: dict, tee: bool):
        path = ROOT / job.log
        path.parent.mkdir(parents=True, exist_ok=True)
        self.job, self.slot, self.t0 = job, slot, time.perf_counter()
        cut = _ends_mid_line(path)
        self.fh = open(path, "ab")  # never truncated: each attempt is appended after its header
        header = job.header or job.local_header()  # on a line of its own, also after an attempt killed mid-line
        self.fh.write(f"{chr(10) if cut else ''}{header}\n".encode())
        self.fh.flush()
        out, cmd = (subprocess.PIPE if tee else self.fh), job.command()
        try:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            self.fh.close()
            raise ConfigError(f"cannot start {cmd[0]} (set $PYTHON to the interpreter for train.py): {err}") from None
        self.pump = threading.Thread(target=self._copy, daemon=True) if tee else None
        if self.pump:
            self.pump.start()
        _STARTED.add(self)

    def _copy(self) -> None:
        console = sys.stdout.buffer
        while chunk := self.proc.stdout.read1(1 << 16):
            self.fh.write(chunk)
            console.write(chunk)
            console.flush()

    def done(self) -> bool:
        return self.proc.poll() is not None

    def finish(self) -> Result:
        rc = self.proc.wait()
        _STARTED.discard(self)
        if self.pump:
            self.pump.join()
        self.fh.close()
        return Result(self.job, self.slot, rc, time.perf_counter() - self.t0)

    def terminate(self) -> None:
        """SIGTERM: a training train.py finishes its step and saves its place (utils/stop.py)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            print(f"{self.job.run}: stopping (a run in training saves its place first)", file=sys.stderr, flush=True)

    def stop(self, deadline: float) -> None:
        """Wait for a terminated run until `deadline` (time.monotonic()), then SIGKILL it."""
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.finish()


def run_jobs(jobs, slots=({},), *, tee=False, stop_on_failure=True, on_start: Callable | None = None,
             on_end: Callable | None = None, busy: Callable | None = None,
             poll: Callable | None = None) -> list[Result]:
    """Run the jobs len(slots) at a time; slot i's env vars (a GPU id, one CPU thread...) go to each
    run it hosts. Output goes to each job's log (and the console with tee). With stop_on_failure no
    job starts after a failure; running ones finish. Interrupted (Ctrl-C, SIGTERM): children stopped.
    busy(job) -> reason or None: asked just before a job starts (a reason: not started) and after it
    failed (a reason: skipped, not failed; e.g. another process claimed the run first). poll() is called
    every 0.2 s while jobs run (a SLURM task passes on the time-limit warning there, not in its handler)."""
    pending, running, results = deque(jobs), {}, []

    def ended(res):
        results.append(res)
        if on_end:
            on_end(res)

    try:
        while pending or running:
            for slot, env in enumerate(slots):
                if slot in running and running[slot].done():
                    res = running.pop(slot).finish()
                    if res.returncode != 0 and busy:
                        res.skipped = busy(res.job)
                    ended(res)
                while slot not in running and pending and not (stop_on_failure and any(not r.ok for r in results)):
                    job = pending.popleft()
                    why = busy(job) if busy else None
                    if why:
                        ended(Result(job, slot, 0, 0.0, skipped=why))
                        continue
                    if on_start:
                        on_start(job, slot)
                    running[slot] = _Running(job, slot, env, tee)
            if stop_on_failure and any(not r.ok for r in results) and not running:
                break
            if running:
                if poll:
                    poll()
                time.sleep(0.2)
    finally:  # interrupted: every run is told at once, then each gets STOP_WAIT_S to save its place
        for proc in running.values():
            proc.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in running.values():
            proc.stop(deadline)
    return results


def tail(path, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --- run_train.sh: local runs ---------------------------------------------------------------------
def run_local(opts, todo: list[SweepRun], n_selected: int) -> int:
    """Run `todo` here, sequentially (console + log) or one per GPU; the first failure stops new starts."""
    print(f"{len(todo)} run(s) to do (shard {opts.shard[0]}/{opts.shard[1]}, {n_selected} in the reproduction)",
          flush=True)
    gpus = opts.gpus
    slots = [{"CUDA_VISIBLE_DEVICES": g} for g in gpus] or [{}]

    def started(job, slot):
        where = f" on GPU {gpus[slot]}" if gpus else ""
        print(f"start: {job.run}{where} (log {job.log})", flush=True)

    def ended(res):
        if res.skipped:
            print(f"skip ({res.skipped}): {res.job.run}", file=sys.stderr, flush=True)
            return
        if res.ok:
            if gpus:
                print(f"done: {res.job.run}", flush=True)
            return
        print(f"FAILED: {res.job.run} (exit status {res.returncode}); last lines of {res.job.log}:\n"
              f"{tail(ROOT / res.job.log)}\nstopping (no new runs start); finished runs are kept and skipped "
              f"when ./run_train.sh is started again", file=sys.stderr, flush=True)

    jobs = [Job(r, opts.output_dir, opts.run_args(r.config)) for r in todo]
    results = run_jobs(jobs, slots, tee=not gpus, on_start=started, on_end=ended,
                       busy=lambda job: busy(job.run, opts.output_dir))
    if any(not r.ok for r in results):
        if gpus:
            print("the runs already started on other GPUs were allowed to finish; exiting with failure",
                  file=sys.stderr)
        return 1
    skipped = sum(r.skipped is not None for r in results)
    print("all runs finished" + (f" ({skipped} left to the other processes that hold them)" if skipped else ""))
    return 0


def unfinished(runs, output_dir, fix: bool = True) -> list[SweepRun]:
    """The runs to train: neither finished nor held by a live process (each skipped one is named on stderr,
    with the holder). A finished --force run left in staging is promoted first (`settle`; fix=False: named)."""
    todo = []
    for run in runs:
        settle(run, output_dir, fix)
        if run.state(output_dir) == ckpt.FINISHED:
            print(f"skip (finished): {run}", file=sys.stderr)
        elif holder := run.holder(output_dir):
            print(f"skip (held by {holder.describe()}): {run}", file=sys.stderr)
        else:
            todo.append(run)
    return todo



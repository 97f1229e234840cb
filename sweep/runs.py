"""The reproduction's runs, the state of each, and the one local runner.

The full reproduction is 9 configs x (folds 0-3 with seeds 1001, 1002 + fold -1 with seeds 2001-2008)
= 144 runs with fixed seeds (docs/solution.md §8; the values are in configs/ensemble.py). `make_runs` is
the only place that list is made; `run_state` of utils/checkpoint is the only rule for whether a run is
finished. The local runner (`run_jobs`: N train.py processes at a time, env vars per slot) serves
./run_train.sh (sweep/cli.py) and the demo; sweep/slurm.py turns the same list into a SLURM job array.
"""
from __future__ import annotations

import os
import re
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
from utils.config import ConfigError, available_configs

ROOT = Path(__file__).resolve().parents[1]

TASK_HEADER = "=== sweep task"  # first line of each attempt in a run's log (the blend check quotes it)


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


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m:
        raise ConfigError(f"--shard expects i/n (e.g. 0/4), got '{text}'")
    i, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and i < n):
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got '{text}'")
    return i, n


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
    """One train.py run: where it logs, and how it starts (launcher: e.g. torchrun before train.py)."""
    run: SweepRun
    output_dir: str
    extra: list = field(default_factory=list)
    append: bool = False  # keep earlier attempts in the log (SLURM tasks)
    header: str | None = None  # first line written to the log
    launcher: list = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.run.log(self.output_dir)

    def command(self) -> list[str]:
        return [python_cmd(), *self.launcher, *train_argv(self.run, self.output_dir, self.extra)]


@dataclass
class Result:
    job: Job
    slot: int
    returncode: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


class _Running:
    """A started job: its process, and (tee) a thread copying its output to the log and the console."""

    def __init__(self, job: Job, slot: int, env: dict, tee: bool):
        path = ROOT / job.log
        path.parent.mkdir(parents=True, exist_ok=True)
        self.job, self.slot, self.t0 = job, slot, time.perf_counter()
        cut = job.append and _ends_mid_line(path)
        self.fh = open(path, "ab" if job.append else "wb")
        if job.header:  # on a line of its own, also after an attempt killed mid-line
            self.fh.write(f"{chr(10) if cut else ''}{job.header}\n".encode())
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
        if self.pump:
            self.pump.join()
        self.fh.close()
        return Result(self.job, self.slot, rc, time.perf_counter() - self.t0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.finish()


def run_jobs(jobs, slots=({},), *, tee=False, stop_on_failure=True,
             on_start: Callable | None = None, on_end: Callable | None = None) -> list[Result]:
    """Run the jobs len(slots) at a time; slot i's env vars (a GPU id, one CPU thread...) go to each
    run it hosts. Output goes to each job's log (and the console with tee). With stop_on_failure no
    job starts after a failure; running ones finish. Interrupted (Ctrl-C, SIGTERM): children stopped."""
    pending, running, results = deque(jobs), {}, []
    try:
        while pending or running:
            for slot, env in enumerate(slots):
                if slot in running and running[slot].done():
                    results.append(running.pop(slot).finish())
                    if on_end:
                        on_end(results[-1])
                stopped = stop_on_failure and any(not r.ok for r in results)
                if slot not in running and pending and not stopped:
                    job = pending.popleft()
                    if on_start:
                        on_start(job, slot)
                    running[slot] = _Running(job, slot, env, tee)
            if stop_on_failure and any(not r.ok for r in results) and not running:
                break
            if running:
                time.sleep(0.2)
    finally:
        for proc in running.values():
            proc.stop()
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
        if res.ok:
            if gpus:
                print(f"done: {res.job.run}", flush=True)
            return
        print(f"FAILED: {res.job.run} (exit status {res.returncode}); last lines of {res.job.log}:\n"
              f"{tail(ROOT / res.job.log)}\nstopping (no new runs start); finished runs are kept and skipped "
              f"when ./run_train.sh is started again", file=sys.stderr, flush=True)

    jobs = [Job(r, opts.output_dir, opts.train_args) for r in todo]
    results = run_jobs(jobs, slots, tee=not gpus, on_start=started, on_end=ended)
    if any(not r.ok for r in results):
        if gpus:
            print("the runs already started on other GPUs were allowed to finish; exiting with failure",
                  file=sys.stderr)
        return 1
    print("all runs finished")
    return 0


def unfinished(runs, output_dir) -> list[SweepRun]:
    """The runs not finished yet; each finished one is named on stderr."""
    todo = []
    for run in runs:
        if run.state(output_dir) == ckpt.FINISHED:
            print(f"skip (finished): {run}", file=sys.stderr)
        else:
            todo.append(run)
    return todo



"""The training sweep: which runs there are, the state of each, and one runner for them.

The full reproduction is 9 configs x (folds 0-3 with seeds 1001, 1002 + fold -1 with seeds 2001-2008)
= 144 runs with fixed seeds (docs/solution.md §8). `make_runs` is the only place that list is
written; `run_state` of utils/checkpoint is the only rule for whether a run is finished. The local
runner (`run_jobs`: N train.py processes at a time, env vars per slot) serves ./run_train.sh and the
demo; utils/slurm.py turns the same list into a SLURM job array.

Usage (./run_train.sh is this command):
  ./run_train.sh [selection] [--gpus 0,1,2,3] [--shard i/n] [--dry-run] [train.py args]
  ./run_train.sh [selection] --slurm [--partition P] [--gpus-per-run 1] [--cpus-per-run C] [--max-parallel N]
                 [--time HH:MM:SS] [--blend-partial] [--sbatch-arg ARG] [--dry-run] [-- train.py args]

  selection        --configs cfg_2a,cfg_5a (default: all nine)  --folds 0,1,2,3,-1  --seeds 7,8 (replace the
                   reference seeds of every chosen fold)
  --gpus LIST      one run per listed GPU at a time (CUDA_VISIBLE_DEVICES); default: one run at a time
  --shard i/n      every n-th run starting at run i (i = 0..n-1), to split the runs over machines
  --dry-run        print the train.py commands (with --slurm: the sbatch scripts) and exit
  --slurm          submit a job array (one task per unfinished run) and a blend job after it
                   (CPUs per task: --cpus-per-run, default 8 per GPU for the loader workers, 1 without)
  train.py args    anything else (or everything after --) goes to every train.py call, e.g.
                   --data_dir /data --output_dir /runs --epochs 1
Finished runs are skipped, interrupted ones resumed. Each run logs to <output_dir>/logs/<cfg>_fold<f>_seed<s>.log;
locally the first failure stops new runs from starting.

Inside SLURM jobs (written into the generated scripts):
  python -m utils.sweep task CFG FOLD SEED [--nproc N] [-- train.py args]   one run, its state checked first
  python -m utils.sweep check [selection] [--output_dir O] [--partial]       every run finished? (before the blend)
  python -m utils.sweep state CFG FOLD SEED [train.py args]                  print the run's state
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils import checkpoint as ckpt  # noqa: E402
from utils.config import ConfigError, available_configs, load_config  # noqa: E402
from utils.io import run_cli  # noqa: E402

CONFIGS = ["cfg_1", "cfg_2a", "cfg_2b", "cfg_3", "cfg_4", "cfg_5a", "cfg_5b", "cfg_5c", "cfg_5d"]
FOLD_SEEDS = {0: (1001, 1002), 1: (1001, 1002), 2: (1001, 1002), 3: (1001, 1002), -1: tuple(range(2001, 2009))}
USAGE = __doc__[__doc__.index("Usage"):]
TASK_HEADER = "=== sweep task"  # first line of each attempt in a run's log (the blend check quotes it)


# --- the runs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
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


def make_runs(configs=None, folds=None, seeds=None) -> list[Run]:
    """The runs in a fixed order (config, fold, seed); by default the reproduction's 144.

    `folds` picks among 0-3 and -1 (in the order given); `seeds` replaces each fold's reference seeds,
    so the demo gets one run per config and fold with its own seed."""
    configs = check_configs(configs or CONFIGS)
    folds = list(FOLD_SEEDS) if folds is None else list(dict.fromkeys(folds))
    for fold in folds:
        if fold not in FOLD_SEEDS:
            raise ConfigError(f"bad fold {fold}: the folds are 0, 1, 2, 3 and -1 (all rows)")
    return [Run(c, f, s) for c in configs for f in folds for s in (seeds or FOLD_SEEDS[f])]


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m:
        raise ConfigError(f"--shard expects i/n (e.g. 0/4), got '{text}'")
    i, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and i < n):
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got '{text}'")
    return i, n


def train_arg(args, name: str, default=None):
    """The value of train.py option --name in `args` (last one wins), else `default`."""
    value = default
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def python_cmd() -> str:
    """The interpreter for train.py: $PYTHON, else this one."""
    return os.environ.get("PYTHON") or sys.executable


def train_argv(run: Run, output_dir, extra=()) -> list[str]:
    """train.py's arguments for `run`, with --resume when it is interrupted (state read now)."""
    argv = ["train.py", "-C", run.config, "--fold", str(run.fold), "--seed", str(run.seed)]
    if run.state(output_dir) == ckpt.INTERRUPTED:
        argv.append("--resume")
    return argv + list(extra)


# --- the local runner -----------------------------------------------------------------------------
@dataclass
class Job:
    """One train.py run: where it logs, and how it starts (launcher: e.g. torchrun before train.py)."""
    run: Run
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
def run_local(opts, todo: list[Run], n_selected: int) -> int:
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


def unfinished(runs, output_dir) -> list[Run]:
    """The runs not finished yet; each finished one is named on stderr."""
    todo = []
    for run in runs:
        if run.state(output_dir) == ckpt.FINISHED:
            print(f"skip (finished): {run}", file=sys.stderr)
        else:
            todo.append(run)
    return todo


# --- command line ---------------------------------------------------------------------------------
VALUE_OPTS = {"--configs": "configs", "--folds": "folds", "--seeds": "seeds", "--gpus": "gpus", "--shard": "shard",
              "--partition": "partition", "--gpus-per-run": "gpus_per_run", "--cpus-per-run": "cpus_per_run",
              "--max-parallel": "max_parallel", "--time": "time", "--sbatch-arg": "sbatch_args", "--nproc": "nproc"}
FLAG_OPTS = {"--dry-run": "dry_run", "--dry_run": "dry_run", "--slurm": "slurm", "--blend-partial": "blend_partial",
             "--partial": "blend_partial"}


@dataclass
class Options:
    configs: list = None
    folds: list = None
    seeds: list = None
    gpus: list = field(default_factory=list)
    shard: tuple = (0, 1)
    output_dir: str = None
    train_args: list = field(default_factory=list)
    dry_run: bool = False
    slurm: bool = False
    partition: str = None
    gpus_per_run: int = 1
    cpus_per_run: int = None
    max_parallel: int = None
    time: str = None
    blend_partial: bool = False
    sbatch_args: list = field(default_factory=list)
    nproc: int = 1

    def runs(self) -> list[Run]:
        return make_runs(self.configs, self.folds, self.seeds)


def _items(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def _int(name: str, text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(f"{name} expects an integer >= {low}, got '{text}'")
    return value


def _set(opts: Options, key: str, value: str, flag: str) -> None:
    if key in ("configs", "gpus"):
        setattr(opts, key, _items(value))
    elif key in ("folds", "seeds"):
        setattr(opts, key, [_int(flag, v, -1 if key == "folds" else 0) for v in _items(value)])
    elif key == "shard":
        opts.shard = parse_shard(value)
    elif key in ("gpus_per_run", "cpus_per_run", "max_parallel", "nproc"):
        setattr(opts, key, _int(flag, value, 0 if key == "gpus_per_run" else 1))
    elif key == "sbatch_args":
        opts.sbatch_args.append(value)
    else:
        setattr(opts, key, value)


def parse_args(argv) -> Options:
    """Sweep options; every other argument (and all after `--`) is a train.py argument.
    train.py's --output_dir (last one wins) is also where the sweep looks for the runs."""
    opts, i = Options(), 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--output-dir"):  # the scripts' spelling: train.py's is --output_dir
            arg = arg.replace("--output-dir", "--output_dir", 1)
        flag, eq, value = arg.partition("=")
        if arg == "--":
            opts.train_args += argv[i + 1:]
            break
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg in FLAG_OPTS:
            setattr(opts, FLAG_OPTS[arg], True)
        elif flag in VALUE_OPTS:
            if not eq:
                value, i = (argv[i + 1] if i + 1 < len(argv) else ""), i + 1
                if not value or (value.startswith("--") and flag != "--sbatch-arg"):
                    raise ConfigError(f"{flag} needs a value")
            _set(opts, VALUE_OPTS[flag], value, flag)
        else:
            opts.train_args.append(arg)
        i += 1
    opts.output_dir = train_arg(opts.train_args, "output_dir", load_config(CONFIGS[0]).output_dir)
    return opts


def print_commands(runs, opts) -> None:
    for run in runs:
        print(f"{python_cmd()} {shlex.join(train_argv(run, opts.output_dir, opts.train_args))}")


def sweep_main(argv) -> int:
    opts = parse_args(argv)
    selected = opts.runs()
    if opts.slurm:
        from utils import slurm

        return slurm.submit_sweep(opts, selected)
    todo = unfinished(selected[opts.shard[0]::opts.shard[1]], opts.output_dir)
    if opts.dry_run:
        print_commands(todo, opts)
        return 0
    return run_local(opts, todo, len(selected))


def run_spec(argv) -> tuple[Run, Options]:
    """`CFG FOLD SEED [options] [train.py args]` of the task / state commands."""
    if len(argv) < 3:
        raise ConfigError("expected CONFIG FOLD SEED (e.g. cfg_5a 0 1001)")
    config, fold, seed = argv[:3]
    run = make_runs([config], [_int("FOLD", fold, -1)], [_int("SEED", seed, 0)])[0]
    return run, parse_args(argv[3:])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("task", "check", "state") else None
    if command == "task":
        from utils import slurm

        return slurm.run_task(*run_spec(argv[1:]))
    if command == "state":
        run, opts = run_spec(argv[1:])
        print(run.state(opts.output_dir))
        return 0
    if command == "check":
        from utils import slurm

        opts = parse_args(argv[1:])
        return slurm.check_finished(opts.runs(), opts.output_dir, opts.blend_partial)
    return sweep_main(argv)


def cli(argv=None) -> int:
    """main() with one-line errors (exit 2); Ctrl-C or SIGTERM stop the runs in progress (exit 130 / 143)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = []
    try:
        return run_cli(lambda a: status.append(main(a)), argv) or (status[0] if status else 0)
    except KeyboardInterrupt:
        print("interrupted: the runs in progress were stopped; start again to resume them", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `--dry-run | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # run as utils.sweep, so that utils.slurm shares this module
    from utils.sweep import cli as _cli

    sys.exit(_cli())

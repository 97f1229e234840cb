"""The command line of ./run_train.sh (`python -m sweep`): select runs, then train them here or on SLURM.

Usage (./run_train.sh is this command):
  ./run_train.sh [selection] [--gpus 0,1,2,3] [--shard i/n] [--dry-run] [paths] [--overrides F] [-- train.py args]
  ./run_train.sh [selection] --slurm [--partition P] [--gpus-per-run 1] [--cpus-per-run C] [--max-parallel N]
                 [--time HH:MM:SS] [--signal-grace S] [--blend-partial] [--sbatch-arg ARG] [--dry-run] [paths]
                 [--overrides F] [-- train.py args]

  selection        --configs cfg_2a,cfg_5a (default: all nine)  --folds 0,1,2,3,-1  --seeds 7,8 (replace the
                   reference seeds of every chosen fold); lists comma- or space-separated
  paths            --data-dir D  --output-dir O (or --data_dir, --output_dir; also accepted after --, the last
                   one wins): the data and the runs, for the sweep, every train.py, the check and the blend;
                   relative paths are from the folder you run the command in (default: the repository's
                   datamount/ and output/)
  --gpus LIST      one run per listed GPU at a time (CUDA_VISIBLE_DEVICES); default: one run at a time
  --shard i/n      every n-th run starting at run i (i = 0..n-1), to split the runs over machines
  --overrides F    per-config train.py arguments from the JSON file F (relative to where you run the command),
                   e.g. {"*": {"num_workers": 4}, "cfg_2a": {"batch_size": 16}, "cfg_5a": ["--epochs", "5"]}:
                   a run gets "*", then its config's, then the args after -- (the last one wins); checked whole
                   before anything starts (configs, fields, values; no data_dir/output_dir/fold/seed/name)
  --dry-run        print the train.py commands (with --slurm: the sbatch scripts) and exit
  --slurm          submit a job array (one task per unfinished run) and a blend job after it
                   (CPUs per task: --cpus-per-run, default 8 per GPU for the loader workers, 1 without)
  --signal-grace S SLURM warns each task S seconds before its --time limit (default 180, or 3/4 of a limit
                   under 4 minutes; 0: off): train.py
                   finishes its step, saves its place inside the epoch, and the task requeues itself
                   (--requeue) to go on from there; a run longer than the limit finishes over several slots
  -- train.py args everything after -- goes to every train.py call as it is (the paths among it made
                   absolute), e.g. -- --epochs 1 --lr 1e-4; an unknown option before -- is an error (nothing
                   is trained or submitted)
Finished runs are skipped, interrupted ones resumed; a run that another live process holds (the train.py of
another sweep or job) is skipped, naming it. Each run appends to <output_dir>/logs/<cfg>_fold<f>_seed<s>.log,
a header line per attempt; locally the first failure stops new runs from starting. Ctrl-C or SIGTERM: the
runs in progress finish their step and save their place (a start again goes on from there).

Inside SLURM jobs (written into the generated scripts):
  python -m sweep task CFG FOLD SEED [--nproc N] [-- train.py args]   one run, its state checked first
  python -m sweep check [selection] [--output-dir O] [--partial]       every run finished? (before the blend)
  python -m sweep state CFG FOLD SEED [train.py args]                  print the run's state
"""
from __future__ import annotations

import difflib
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field

from sweep.overrides import Overrides, load as load_overrides
from sweep.runs import (CONFIGS, ROOT, SweepRun, check_configs, make_runs, python_cmd, run_local, train_argv,
                        unfinished)
from utils.cli import ArgumentParser
from utils.config import ConfigError, load_config
from utils.io import run_cli

USAGE = __doc__[__doc__.index("Usage"):]
CALLER_CWD = "HMS_SWEEP_CWD"  # set by run_train.sh before it cds into the repository: where relative paths start
PATHS = ("data_dir", "output_dir")  # sweep options that train.py also gets, before or after --


# --- command line ---------------------------------------------------------------------------------
@dataclass
class Options:
    configs: list = None
    folds: list = None
    seeds: list = None
    gpus: list = field(default_factory=list)
    shard: tuple = (0, 1)
    data_dir: str = None  # absolute
    output_dir: str = None  # absolute
    train_args: list = field(default_factory=list)
    dry_run: bool = False
    slurm: bool = False
    partition: str = None
    gpus_per_run: int = 1
    cpus_per_run: int = None
    max_parallel: int = None
    time: str = None
    signal_grace: int = None  # s before the time limit SLURM warns a task (SIGUSR1); 0: none (sweep/slurm.grace)
    blend_partial: bool = False
    sbatch_args: list = field(default_factory=list)
    nproc: int = 1
    overrides: Overrides = field(default_factory=Overrides)  # --overrides FILE, checked

    def runs(self) -> list[SweepRun]:
        return make_runs(self.configs, self.folds, self.seeds)

    def run_args(self, config: str) -> list[str]:
        """train.py's overrides for a run of `config`: the overrides file's, then those after `--` (which win)."""
        return self.overrides.args(config, self.train_args)


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m:
        raise ConfigError(f"--shard expects i/n (e.g. 0/4), got '{text}'")
    i, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and i < n):
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got '{text}'")
    return i, n


def _int(name: str, text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(f"{name} expects an integer >= {low}, got '{text}'")
    return value


def parser() -> ArgumentParser:
    """The sweep's own options (utils/cli.py: both spellings, comma- or space-separated lists)."""
    p = ArgumentParser(prog="run_train.sh", usage=USAGE, add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_list("--configs")
    p.add_list("--folds", type=str)
    p.add_list("--seeds", type=str)
    p.add_list("--gpus")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--partition")
    for flag in ("--gpus-per-run", "--cpus-per-run", "--max-parallel", "--nproc", "--signal-grace"):
        p.add_argument(flag)
    p.add_argument("--time")
    p.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--slurm", action="store_true")
    p.add_argument("--blend-partial", "--partial", action="store_true")
    p.add_argument("--overrides")
    for name in PATHS:
        p.add_argument("--" + name.replace("_", "-"))
    return p


def unknown_option(p: ArgumentParser, unknown: list[str]) -> ConfigError:
    """One line naming the first argument the sweep does not know, with a near option if there is one."""
    token = unknown[0]
    flag = token.split("=", 1)[0]
    known = [o for o in p._option_string_actions if o.startswith("--")]
    near = difflib.get_close_matches(flag.replace("_", "-"), known, n=1, cutoff=0.75)
    what = f"unknown option {flag}" if flag.startswith("-") else f"unexpected argument '{token}'"
    if near:
        return ConfigError(f"{what}: did you mean {near[0]}? (train.py's arguments go after `--`); nothing was "
                           f"started")
    return ConfigError(f"{what}: train.py's arguments go after `--`, e.g. ./run_train.sh [options] -- "
                       f"{shlex.join(unknown)}; nothing was started")


def take_paths(args: list[str]) -> tuple[list[str], dict]:
    """Split train.py arguments into the rest and the --data-dir / --output-dir values among them (either
    spelling, `--x v` or `--x=v`; the last one wins)."""
    rest, found, i = [], {}, 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if name not in PATHS:
            rest.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"{flag} needs a value")
            value, i = args[i + 1], i + 1
        found[name] = value
        i += 1
    return rest, found


def caller_cwd() -> str:
    """Where the user typed the command: run_train.sh's $HMS_SWEEP_CWD, else this process's folder."""
    return os.environ.get(CALLER_CWD) or os.getcwd()


def absolute(path: str, base, what: str = "--data-dir or --output-dir") -> str:
    if not path:
        raise ConfigError(f"an empty path was given for {what}")
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def parse_args(argv, cwd=None) -> Options:
    """The sweep's options before `--` (an unknown one is an error), train.py's arguments after it.

    --data-dir / --output-dir (either spelling) before or after `--` are the sweep's and train.py's alike,
    the last one winning; relative ones are taken from `cwd` (default: the caller's folder) and train.py
    gets them absolute, so the sweep, every train.py, the SLURM scripts, the check and the blend read the
    same folders. Without them: the configs' datamount/ and output/ of the repository (train.py's folder)."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    p = parser()
    ns, unknown = p.parse_known_args(argv[:cut])
    if ns.help:
        print(USAGE)
        raise SystemExit(0)
    if unknown:
        raise unknown_option(p, unknown)
    opts = Options(configs=ns.configs, gpus=ns.gpus or [], shard=parse_shard(ns.shard), partition=ns.partition,
                   time=ns.time, sbatch_args=ns.sbatch_args, dry_run=ns.dry_run, slurm=ns.slurm,
                   blend_partial=ns.blend_partial)
    if ns.folds is not None:
        opts.folds = [_int("--folds", v, -1) for v in ns.folds]
    if ns.seeds is not None:
        opts.seeds = [_int("--seeds", v, 0) for v in ns.seeds]
    for key, low in (("gpus_per_run", 0), ("cpus_per_run", 1), ("max_parallel", 1), ("nproc", 1), ("signal_grace", 0)):
        if getattr(ns, key) is not None:
            setattr(opts, key, _int("--" + key.replace("_", "-"), getattr(ns, key), low))
    rest, after = take_paths(argv[cut + 1:])
    set_paths(opts, {**{k: getattr(ns, k) for k in PATHS if getattr(ns, k) is not None}, **after}, rest, cwd)
    if ns.overrides is not None:  # read and checked now, before anything is trained or submitted
        path = absolute(ns.overrides, cwd or caller_cwd(), "--overrides")
        opts.overrides = load_overrides(path, check_configs(opts.configs or CONFIGS))
    return opts


def set_paths(opts: Options, given: dict, train_args: list[str], cwd=None) -> None:
    """opts.data_dir / output_dir absolute (given: from `cwd`; else the config's, from the repository), and
    train.py's arguments: `train_args` then each given path once, absolute."""
    base = cwd or caller_cwd()
    defaults = load_config(CONFIGS[0])
    for name in PATHS:
        value = absolute(given[name], base) if name in given else absolute(getattr(defaults, name), ROOT)
        setattr(opts, name, value)
    opts.train_args = list(train_args) + [a for name in PATHS if name in given
                                          for a in ("--" + name, getattr(opts, name))]


def print_commands(runs, opts) -> None:
    for run in runs:
        print(f"{python_cmd()} {shlex.join(train_argv(run, opts.output_dir, opts.run_args(run.config)))}")


def sweep_main(argv, cwd=None) -> int:
    opts = parse_args(argv, cwd)
    selected = opts.runs()
    if opts.slurm:
        from sweep import slurm

        return slurm.submit_sweep(opts, selected)
    todo = unfinished(selected[opts.shard[0]::opts.shard[1]], opts.output_dir, fix=not opts.dry_run)
    if opts.dry_run:
        print_commands(todo, opts)
        return 0
    return run_local(opts, todo, len(selected))


def run_spec(argv, train_only: bool = False, cwd=None) -> tuple[SweepRun, Options]:
    """`CFG FOLD SEED [options] [-- train.py args]` of the task command; with `train_only` (the state
    command, which scripts/slurm_ddp.sbatch calls with the train.py arguments it got) every argument
    after CFG FOLD SEED is train.py's, of which only --data-dir / --output-dir are read."""
    if len(argv) < 3:
        raise ConfigError("expected CONFIG FOLD SEED (e.g. cfg_5a 0 1001)")
    config, fold, seed = argv[:3]
    run = make_runs([config], [_int("FOLD", fold, -1)], [_int("SEED", seed, 0)])[0]
    if not train_only:
        return run, parse_args(argv[3:], cwd)
    args = argv[3:]
    rest, given = take_paths(args[1:] if args[:1] == ["--"] else args)
    opts = Options()
    set_paths(opts, given, rest, cwd)
    return run, opts


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # where the user typed the command (run_train.sh cds into the repository): relative paths start there;
    # taken out of the environment, so train.py, sbatch and the jobs see only the absolute paths
    cwd = os.environ.pop(CALLER_CWD, None) or os.getcwd()
    command = argv[0] if argv and argv[0] in ("task", "check", "state") else None
    if command == "task":
        from sweep import slurm

        return slurm.run_task(*run_spec(argv[1:], cwd=cwd))
    if command == "state":
        run, opts = run_spec(argv[1:], train_only=True, cwd=cwd)
        print(run.state(opts.output_dir))
        return 0
    if command == "check":
        from sweep import slurm

        opts = parse_args(argv[1:], cwd)
        return slurm.check_finished(opts.runs(), opts.output_dir, opts.blend_partial)
    return sweep_main(argv, cwd)


def cli(argv=None) -> int:
    """main() with one-line errors (exit 2); Ctrl-C or SIGTERM stop the runs in progress (exit 130 / 143)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = []
    try:
        return run_cli(lambda a: status.append(main(a)), argv) or (status[0] if status else 0)
    except KeyboardInterrupt:
        print("interrupted: the runs in progress were stopped (a run in training saves its place first); start "
              "again to go on from there", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `--dry-run | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0



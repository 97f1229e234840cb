"""The command line of ./run_train.sh (`python -m sweep`): select runs, then train them here or on SLURM.

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
  python -m sweep task CFG FOLD SEED [--nproc N] [-- train.py args]   one run, its state checked first
  python -m sweep check [selection] [--output_dir O] [--partial]       every run finished? (before the blend)
  python -m sweep state CFG FOLD SEED [train.py args]                  print the run's state
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field

from sweep.runs import (CONFIGS, SweepRun, make_runs, parse_shard, python_cmd, run_local, train_arg, train_argv,
                        unfinished)
from utils.cli import ArgumentParser
from utils.config import ConfigError, load_config
from utils.io import run_cli

USAGE = __doc__[__doc__.index("Usage"):]


# --- command line ---------------------------------------------------------------------------------
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

    def runs(self) -> list[SweepRun]:
        return make_runs(self.configs, self.folds, self.seeds)


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
    for flag in ("--gpus-per-run", "--cpus-per-run", "--max-parallel", "--nproc"):
        p.add_argument(flag)
    p.add_argument("--time")
    p.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--slurm", action="store_true")
    p.add_argument("--blend-partial", "--partial", action="store_true")
    return p


def parse_args(argv) -> Options:
    """Sweep options; every other argument (and all after `--`) is a train.py argument.
    train.py's --output_dir (last one wins) is also where the sweep looks for the runs."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    ns, rest = parser().parse_known_args(argv[:cut])
    if ns.help:
        print(USAGE)
        raise SystemExit(0)
    opts = Options(configs=ns.configs, gpus=ns.gpus or [], shard=parse_shard(ns.shard), partition=ns.partition,
                   time=ns.time, sbatch_args=ns.sbatch_args, dry_run=ns.dry_run, slurm=ns.slurm,
                   blend_partial=ns.blend_partial)
    if ns.folds is not None:
        opts.folds = [_int("--folds", v, -1) for v in ns.folds]
    if ns.seeds is not None:
        opts.seeds = [_int("--seeds", v, 0) for v in ns.seeds]
    for key, low in (("gpus_per_run", 0), ("cpus_per_run", 1), ("max_parallel", 1), ("nproc", 1)):
        if getattr(ns, key) is not None:
            setattr(opts, key, _int("--" + key.replace("_", "-"), getattr(ns, key), low))
    # the scripts' spelling --output-dir is train.py's --output_dir
    rest = [re.sub(r"^--output-dir(?==|$)", "--output_dir", a) for a in rest]
    opts.train_args = rest + argv[cut + 1:]
    opts.output_dir = train_arg(opts.train_args, "output_dir", load_config(CONFIGS[0]).output_dir)
    return opts


def print_commands(runs, opts) -> None:
    for run in runs:
        print(f"{python_cmd()} {shlex.join(train_argv(run, opts.output_dir, opts.train_args))}")


def sweep_main(argv) -> int:
    opts = parse_args(argv)
    selected = opts.runs()
    if opts.slurm:
        from sweep import slurm

        return slurm.submit_sweep(opts, selected)
    todo = unfinished(selected[opts.shard[0]::opts.shard[1]], opts.output_dir)
    if opts.dry_run:
        print_commands(todo, opts)
        return 0
    return run_local(opts, todo, len(selected))


def run_spec(argv) -> tuple[SweepRun, Options]:
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
        from sweep import slurm

        return slurm.run_task(*run_spec(argv[1:]))
    if command == "state":
        run, opts = run_spec(argv[1:])
        print(run.state(opts.output_dir))
        return 0
    if command == "check":
        from sweep import slurm

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



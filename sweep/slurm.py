"""The sweep on a SLURM cluster: a job array (one task per unfinished run) and a blend job after it.

`./run_train.sh --slurm` writes two scripts into <output_dir>/slurm/ (kept there to read, edit and
resubmit), submits the array, then the blend job with --dependency=afterany on it. Faults:
- each array task re-checks its run when it starts (`python -m sweep task`): a finished run is
  never trained twice, an interrupted one (cancelled, timed out, node lost) resumes from its last resume
  state, so after any fault the same array is simply submitted again;
- time limits: tasks are submitted with --signal=B:USR1@<grace> and --requeue. On the warning the task
  passes SIGTERM to train.py, which finishes its step and saves its place inside the epoch (utils/stop.py);
  then the task requeues itself (`scontrol requeue`) and the next slot goes on from that step. Output is
  appended across slots (--open-mode=append);
- afterany, not afterok: with afterok one failed task would leave the blend pending forever
  (DependencyNeverSatisfied) and nobody told why. The blend job instead starts `sweep check`, which
  names every unfinished run (its state, the task that last ran it, how that task ended, the last
  line of the run's log) and stops the blend unless --blend-partial allows a partial set.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from utils import checkpoint as ckpt
from sweep import runs
from sweep.runs import settle
from configs.ensemble import BLEND_FILE, BLEND_FOLDS, FOLD_SEEDS
from utils.cli import shell_quote
from utils.config import ConfigError

ARRAY_FILE, BLEND_JOB_FILE = "train_array.sbatch", "blend.sbatch"
TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}")


# --- the scripts ----------------------------------------------------------------------------------
def abs_dir(path) -> Path:
    return Path(os.path.abspath(runs.ROOT / path))


def sbatch_lines(opts, name: str, output: str, gpus: int) -> list[str]:
    """#SBATCH lines shared by both jobs (the blend asks for no GPU). CPUs by default: 8 per GPU, as many as
    train.py's loader workers (the reference's 8), so the data keeps up; 1 without a GPU."""
    log = abs_dir(opts.output_dir) / "logs" / "slurm" / output
    lines = [f"--job-name={name}", f"--chdir={runs.ROOT}", f"--output={log}", "--ntasks=1",
             f"--cpus-per-task={opts.cpus_per_run or (8 * gpus if gpus else 1)}"]
    lines += [f"--gres=gpu:{gpus}"] if gpus else []
    lines += [f"--partition={opts.partition}"] if opts.partition else []
    lines += [f"--time={opts.time}"] if opts.time else []
    lines += list(opts.sbatch_args)
    return [f"#SBATCH {ln}" for ln in lines]


def selection_args(opts, selected) -> list[str]:
    """The sweep options that select these runs again (for `sweep check` in the blend job)."""
    args = ["--configs", ",".join(dict.fromkeys(r.config for r in selected))]
    args += ["--folds", ",".join(map(str, opts.folds))] if opts.folds is not None else []
    args += ["--seeds", ",".join(map(str, opts.seeds))] if opts.seeds else []
    return args


def bash_array(name: str, items: list[str], comment: str) -> list[str]:
    return [f"{name}=(  # {comment}", *(f"  {item}" for item in items), ")"]


def grouped_args(args: list[str]) -> list[str]:
    """train.py arguments quoted for bash, one option (with its value) per line."""
    groups: list[list[str]] = []
    for arg in args:
        if arg.startswith("-") or not groups:
            groups.append([])
        groups[-1].append(shell_quote(arg))
    return [" ".join(g) for g in groups]


def python_line() -> str:
    py = runs.python_cmd()
    return f"PYTHON=${{PYTHON:-{shutil.which(py) or py}}}"


def override_arrays(todo: list, opts) -> list[str]:
    """Each config's arguments from --overrides, written into the script: the tasks read them as they were at
    submission (sbatch keeps its own copy of the script), whatever becomes of the file."""
    if not opts.overrides.file:
        return []
    return [f"# --overrides {opts.overrides.file} as submitted: OVERRIDES_<config>, then TRAIN_ARGS (which win)",
            *(line for config in dict.fromkeys(r.config for r in todo)
              for line in bash_array(f"OVERRIDES_{config}", grouped_args(opts.overrides.args(config)), config))]


def array_script(todo: list, opts) -> str:
    """One array task per run; the task re-checks the run's state before it trains."""
    throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
    nproc = ["--nproc", str(opts.gpus_per_run)] if opts.gpus_per_run > 1 else []
    out, per_config, warn_s = opts.output_dir, bool(opts.overrides.file), grace(opts)
    head = [
        "#!/bin/bash",
        f"# {len(todo)} training run(s) of the HMS reproduction as a SLURM job array (./run_train.sh --slurm).",
        "# Each task re-checks its run when it starts: a finished run is skipped, an interrupted one resumes",
        "# from its resume state. After a cancel, a time-out or a failure, submit this file again as it is.",
        *(["# SIGUSR1 before the time limit: train.py saves its place and the task requeues itself."]
          if warn_s else []),
        "# Edit freely; RUNS and --array must keep the same size.",
        f"#SBATCH --array=0-{len(todo) - 1}{throttle}",
        *sbatch_lines(opts, "hms-train", "train_%A_%a.out", opts.gpus_per_run),
        *([f"#SBATCH --signal=B:USR1@{warn_s}", "#SBATCH --requeue", "#SBATCH --open-mode=append"]
          if warn_s else []),
        "",
        python_line(),
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        *bash_array("RUNS", [f'"{r.config} {r.fold} {r.seed}"' for r in todo],
                    f"config fold seed; train.py output: {out}/logs/<config>_fold<fold>_seed<seed>.log"),
        *bash_array("TRAIN_ARGS", grouped_args(opts.train_args), "passed to every train.py"),
        *override_arrays(todo, opts),
        "",
        'read -r CONFIG FOLD SEED <<< "${RUNS[$SLURM_ARRAY_TASK_ID]}"',
        *(['OVERRIDES="OVERRIDES_${CONFIG}[@]"'] if per_config else []),
        " ".join(['exec "$PYTHON" -m sweep task "$CONFIG" "$FOLD" "$SEED"', *nproc, "--",
                  *(['"${!OVERRIDES}"'] if per_config else []), '"${TRAIN_ARGS[@]}"']),
    ]
    return "\n".join(head) + "\n"


def blend_folds(opts) -> list[int]:
    return [f for f in (FOLD_SEEDS if opts.folds is None else opts.folds) if f in BLEND_FOLDS]


def blend_script(selected: list, opts) -> str:
    """Check that every selected run finished (naming those that did not), then fit the blend."""
    check = ["-m", "sweep", "check", *selection_args(opts, selected), "--output_dir", opts.output_dir]
    check += ["--partial"] if opts.blend_partial else []
    configs = list(dict.fromkeys(r.config for r in selected))
    blend = ["scripts/blend_weights.py", "--data-dir", opts.data_dir, "--output-dir", opts.output_dir,
             "--configs", *configs, "--folds", *map(str, blend_folds(opts))]
    lines = [
        "#!/bin/bash",
        "# The blend after the training array (submitted with --dependency=afterany:<array job>, so it also",
        "# starts when a task failed): `sweep check` names every selected run that did not finish and stops",
        "# here unless --partial; then the blend weights go to <output_dir>/" + BLEND_FILE + ".",
        "# Resubmit: sbatch --dependency=afterany:<array job id> <this file>",
        *sbatch_lines(opts, "hms-blend", "blend_%j.out", 0),
        "",
        python_line(),
        f'"$PYTHON" {shlex.join(check)} || exit 1',
        f'exec "$PYTHON" {shlex.join(blend)}',
    ]
    return "\n".join(lines) + "\n"


# --- submission -----------------------------------------------------------------------------------
DEFAULT_GRACE = 180  # s: a step, a resume state's write and SLURM's up to a minute of lateness, with room


def grace(opts) -> int:
    """Seconds before the time limit the task is warned: --signal-grace, else 180 s, or 3/4 of a --time limit
    under 4 minutes (a short test slot still trains a while before its warning)."""
    if opts.signal_grace is not None:
        return opts.signal_grace
    return min(DEFAULT_GRACE, time_seconds(opts.time) * 3 // 4) if opts.time else DEFAULT_GRACE


def time_seconds(text: str) -> int:
    """SLURM's --time in seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-H[:M[:S]]
        h, m, sec = (parts + [0, 0])[:3]
    else:  # M, M:S or H:M:S
        h, m, sec = parts if len(parts) == 3 else [0, *parts, 0][:3]
    return int(days or 0) * 86400 + h * 3600 + m * 60 + sec


def check_options(opts) -> None:
    if opts.shard != (0, 1) or opts.gpus:
        raise ConfigError("--shard and --gpus are for local runs; with --slurm every selected run becomes an "
                          "array task (pick runs with --configs / --folds / --seeds)")
    if (opts.signal_grace or 0) > 65535:
        raise ConfigError(f"--signal-grace expects seconds from 0 to 65535 (SLURM's limit), got {opts.signal_grace}")
    if opts.time and not TIME.fullmatch(opts.time):
        raise ConfigError(f"--time expects HH:MM:SS or D-HH:MM:SS, got '{opts.time}'")
    if opts.time and opts.signal_grace and opts.signal_grace >= time_seconds(opts.time):
        raise ConfigError(f"--signal-grace {opts.signal_grace} s is not below the --time limit {opts.time} "
                          f"({time_seconds(opts.time)} s): the warning would come at once; lower it (or 0: no warning)")
    if not opts.dry_run and shutil.which("sbatch") is None:
        raise ConfigError("--slurm needs SLURM's sbatch, which is not on PATH (run on a cluster's login node, "
                          "or use --dry-run to see the scripts)")


def sbatch(path: Path, dependency: str | None = None) -> str:
    cmd = ["sbatch", "--parsable", *([f"--dependency={dependency}"] if dependency else []), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"{shlex.join(cmd)} failed: {(proc.stderr.strip() or proc.stdout.strip())[-300:]}")
    return proc.stdout.strip().split(";")[0]


def submit_sweep(opts, selected: list) -> int:
    """Write the array and blend scripts, submit them (or print them with --dry-run), say where runs log."""
    check_options(opts)
    todo = runs.unfinished(selected, opts.output_dir)
    scripts = {}
    if todo:
        scripts[ARRAY_FILE] = array_script(todo, opts)
    if blend_folds(opts):
        scripts[BLEND_JOB_FILE] = blend_script(selected, opts)
    folder = abs_dir(opts.output_dir) / "slurm"
    if opts.dry_run:
        for name, text in scripts.items():
            print(f"# ---- {folder / name}\n{text}")
        return 0
    (abs_dir(opts.output_dir) / "logs" / "slurm").mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        (folder / name).write_text(text)
    array_id = sbatch(folder / ARRAY_FILE) if todo else None
    report_array(array_id, todo, selected, opts, folder)
    ids = [array_id] if array_id else []
    if BLEND_JOB_FILE in scripts:
        ids.append(sbatch(folder / BLEND_JOB_FILE, f"afterany:{array_id}" if array_id else None))
        when = f"after array {array_id} ends (afterany)" if array_id else "now (every run is finished)"
        print(f"blend job {ids[-1]}: {when}; checks that every selected run finished, then writes "
              f"{abs_dir(opts.output_dir) / BLEND_FILE}\n  script {folder / BLEND_JOB_FILE}, log "
              f"{abs_dir(opts.output_dir) / 'logs/slurm'}/blend_{ids[-1]}.out")
    else:
        print("no blend job: the blend reads folds 0-3 and none is selected")
    if ids:
        print(f"follow with: squeue -j {','.join(ids)}")
    return 0


def report_array(array_id, todo, selected, opts, folder) -> None:
    if not todo:
        print(f"all {len(selected)} selected run(s) are finished: no training to submit")
        return
    cap = f", at most {opts.max_parallel} at a time" if opts.max_parallel else ""
    print(f"array job {array_id}: {len(todo)} run(s) ({len(selected) - len(todo)} of {len(selected)} selected "
          f"already finished){cap}\n  script {folder / ARRAY_FILE} (after a fault: sbatch it again)")
    for k, run in enumerate(todo):
        print(f"  task {array_id}_{k}: {run} -> log {abs_dir(run.log(opts.output_dir))}")
    print(f"  each task's own output: {abs_dir(opts.output_dir) / 'logs/slurm'}/train_{array_id}_<task>.out")


# --- inside the jobs ------------------------------------------------------------------------------
def task_id() -> str | None:
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
    return env.get("SLURM_JOB_ID")


class TimeLimitWarning:
    """SLURM's SIGUSR1 before the time limit (--signal=B:USR1@grace reaches this task process only). The handler
    only notes it; the task's loop passes SIGTERM on to train.py (to its ranks under torchrun), which saves its
    place, and the task requeues itself once train.py has ended."""

    def __init__(self):
        self.received, self.passed_on = False, False

    def __call__(self, signum, frame) -> None:
        self.received = True

    def pass_on(self) -> None:
        if self.received and not self.passed_on:
            self.passed_on = runs.signal_running(signal.SIGTERM) > 0

    def install(self) -> "TimeLimitWarning":
        signal.signal(signal.SIGUSR1, self)
        return self


def saved_since(run, output_dir, since: float) -> bool:
    """Did the run write a resume state after `since` (a time.time())?"""
    try:
        return (run.folder(output_dir) / ckpt.RESUME_FILE).stat().st_mtime >= since
    except OSError:
        return False


def requeue(run, progressed: bool) -> int:
    """Put this task back in the queue (`scontrol requeue`, allowed by --requeue); it resumes the run. Not
    when train.py saved nothing in this slot: the next slot would only do the same."""
    job = os.environ.get("SLURM_JOB_ID")
    if not progressed:
        print(f"{run}: the time-limit warning came before train.py saved a resume state in this slot, so the task is "
              f"not requeued (it would only repeat itself): give it a longer --time or a smaller --signal-grace and "
              f"submit the array again", flush=True)
        return 1
    if not job:
        print(f"{run}: saved its place; no SLURM job to requeue: submit again to go on", flush=True)
        return 1
    print(f"{run}: saved its place before the time limit; requeueing job {job}, which goes on from there",
          flush=True)
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{run}: scontrol requeue {job} failed ({(proc.stderr or proc.stdout).strip()[-200:]}): submit the "
              f"array again to go on", flush=True)
    return proc.returncode


def run_task(run, opts) -> int:
    """One run as an array task: its state is checked now (finished: nothing to do; held by another live
    process, e.g. a task of an earlier array: left to it; interrupted: resume), its train.py output
    appended to the run's log after a header naming the task. SLURM's time-limit warning: `TimeLimitWarning`."""
    warning, started = TimeLimitWarning().install(), time.time()
    settle(run, opts.output_dir)
    state = run.state(opts.output_dir)
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    header = (f"{runs.TASK_HEADER} {task_id() or '(no slurm job)'}{'' if restarts == '0' else f' (requeued {restarts}x)'}"
              f" on {socket.gethostname()}: {run} was {state}")
    if state == ckpt.FINISHED:
        print(f"{header}: already finished, not trained again", flush=True)
        return 0
    if holder := run.holder(opts.output_dir):
        print(f"{header}: held by {holder.describe()}: not trained here", flush=True)
        return 0
    nproc = opts.nproc
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    job = runs.Job(run, opts.output_dir, opts.run_args(run.config), header=header, launcher=launcher)
    print(f"{header}: {'resuming' if state == ckpt.INTERRUPTED else 'starting'}\n$ {shlex.join(job.command())}\n"
          f"train.py output: {runs.ROOT / job.log}", flush=True)
    [res] = runs.run_jobs([job], busy=lambda j: "the time limit is near" if warning.received else
                          runs.busy(j.run, opts.output_dir), poll=warning.pass_on)
    if warning.received and run.state(opts.output_dir) != ckpt.FINISHED:
        return requeue(run, saved_since(run, opts.output_dir, started))
    if res.skipped:
        print(f"{run}: not trained here ({res.skipped})", flush=True)
        return 0
    print(f"{run}: {'finished' if res.ok else f'FAILED (exit status {res.returncode})'} after {res.seconds:.0f} s"
          + ("" if res.ok else f"; last lines of its log:\n{runs.tail(runs.ROOT / job.log)}"), flush=True)
    return res.returncode


def last_line(path: Path, prefer: str | None = None) -> str | None:
    """The file's last non-empty line, or its last line holding `prefer` when there is one."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    chosen = [ln for ln in lines if prefer in ln] if prefer else []
    return (chosen or lines or ["(empty)"])[-1][-200:]


def last_attempt(run, output_dir) -> str:
    """Where an unfinished run last ran and how it ended: the task named in its log's last header, that
    task's own last line (e.g. SLURM's CANCELLED or TIME LIMIT) and its log's last line."""
    log = abs_dir(run.log(output_dir))
    try:
        heads = [ln for ln in log.read_text(errors="replace").splitlines()
                 if ln.startswith((runs.TASK_HEADER, runs.LOCAL_HEADER))]
    except OSError:
        return f"no log ({log})"
    if not heads or heads[-1].startswith(runs.LOCAL_HEADER):
        return f"not run by a sweep task{' last' if heads else ''}; log {log}: {last_line(log)}"
    task = heads[-1][len(runs.TASK_HEADER):].split()[0]
    own = abs_dir(output_dir) / "logs" / "slurm" / f"train_{task}.out"
    ended = last_line(own, prefer="***")  # slurmstepd's line, e.g. *** JOB 12 CANCELLED AT ... DUE TO TIME LIMIT ***
    return f"task {task}" + (f" ended with: {ended} ({own})" if ended else "") + f"; log {log}: {last_line(log)}"


def check_finished(runs, output_dir, partial: bool = False) -> int:
    """Before the blend: name every run that did not finish; non-zero unless `partial` allows that."""
    for run in runs:
        settle(run, output_dir)  # a finished --force run left in staging
    bad = [r for r in runs if r.state(output_dir) != ckpt.FINISHED]
    print(f"check: {len(runs) - len(bad)} of {len(runs)} run(s) finished under {abs_dir(output_dir)}")
    for run in bad:
        problem = ckpt.checkpoint_problem(run.folder(output_dir) / ckpt.CHECKPOINT_FILE)
        state = run.state(output_dir) + ("" if problem == "missing" else f", {ckpt.CHECKPOINT_FILE}: {problem}")
        print(f"  NOT FINISHED: {run} ({state}); {last_attempt(run, output_dir)}")
    if bad and not partial:
        print(f"error: {len(bad)} run(s) did not finish, so no blend on a partial set: submit the sweep again "
              f"(interrupted runs resume) or allow it with --blend-partial", file=sys.stderr)
        return 1
    if bad:
        print(f"--partial: blending without the {len(bad)} unfinished run(s)")
    return 0

"""Which lines of train.py, engine/precision.py and utils/distributed.py only CUDA executes.

    python scripts/cuda_only_lines.py [--keep DIR]      # about half a minute on 2 CPU cores

Runs CPU trainings of a tiny cfg_2a under `coverage` (CUDA hidden): a 2-process gloo run under torchrun
that stops after epoch 1, then, in one process, its resume in fp16, fresh fp16 runs, a --force retrain that
stops and resumes, a run that fails mid-training over a cut-off checkpoint, runs stopped inside and at the
end of an epoch (--stop_after_steps, real SIGTERMs) and their resumes, and each error train.py raises; and engine.precision.describe(), which train.py does not call (scripts/bench_model.py does).
Then it combines the coverage data and prints every line of the three files that none of these ran, each
with the branch that makes it CUDA-only, or NOT CUDA-ONLY, and the `a if <cuda test> else b` values only
CUDA takes on lines the CPU runs (line coverage cannot see those). Exit status 1 when a line the CPU did
not run is not CUDA-only, or when a line the rules below call CUDA-only ran on the CPU.

Whether a line is CUDA-only is decided from the source alone (its AST), never from the coverage data:
the line sits in the body of an `if` whose condition can only be true on CUDA (`<x>.type == "cuda"`,
`<x>.type != "cpu"`, `torch.cuda.is_available()` or a local name bound to it, combined with and/or/not),
in the else of an `if` that is always true on the CPU (`<x>.type == "cpu"`, `<x>.type != "cuda"`), or
after such an `if` whose body returns, raises, breaks or continues. A statement is not excused merely
for naming cuda. tests/test_cuda_only_lines.py runs this and checks the rules on a source of its own.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import ArgumentParser  # noqa: E402
from utils.io import run_cli  # noqa: E402

FILES = ("train.py", "engine/precision.py", "utils/distributed.py")
# cfg_2a shrunk as in tests/test_train_precision.py (a CPU step takes about a second)
SMALL = ["--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
         "--batch_size", "2", "--num_workers", "0", "--neptune_mode", "off"]
# one training batch, one optimiser step (cfg_2a accumulates 3 batches) and one validation row
TINY = ["--max_train_rows", "2", "--max_val_rows", "1", "--grad_accumulation", "1"]


# --- which lines are CUDA-only: the source's AST ------------------------------------------------------
def _device_compare(node) -> tuple[bool, str] | None:
    """(is ==, "cpu"/"cuda") for `<x>.type == "cuda"`-style comparisons, else None."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq))):
        return None
    for a, b in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
        if isinstance(b, ast.Constant) and b.value in ("cpu", "cuda") and isinstance(a, ast.Attribute) and a.attr == "type":
            return isinstance(node.ops[0], ast.Eq), b.value
    return None


def _is_cuda_available(node) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.cuda.is_available"


def only_cuda(e, names: dict) -> bool:
    """True only on a CUDA device: `e` true implies the device is not the CPU."""
    cmp = _device_compare(e)
    if cmp is not None:
        return cmp in ((True, "cuda"), (False, "cpu"))
    if _is_cuda_available(e):
        return True
    if isinstance(e, ast.Name) and e.id in names:
        return only_cuda(names[e.id], {})
    if isinstance(e, ast.BoolOp):
        parts = [only_cuda(v, names) for v in e.values]
        return any(parts) if isinstance(e.op, ast.And) else all(parts)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
        return always_on_cpu(e.operand, names)
    return False


def always_on_cpu(e, names: dict) -> bool:
    """True whenever the device is the CPU: `e` false implies a CUDA device."""
    cmp = _device_compare(e)
    if cmp is not None:
        return cmp in ((True, "cpu"), (False, "cuda"))
    if isinstance(e, ast.BoolOp):
        parts = [always_on_cpu(v, names) for v in e.values]
        return all(parts) if isinstance(e.op, ast.And) else any(parts)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
        return only_cuda(e.operand, names)
    return False


def _bindings(func) -> dict:
    """A function's local names bound once by a plain assignment (e.g. cuda = torch.cuda.is_available())."""
    seen: dict = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            seen[name] = None if name in seen else node.value
    return {k: v for k, v in seen.items() if v is not None}


def cuda_only_lines(source: str) -> dict[int, str]:
    """{line: the branch that makes it CUDA-only} for every line of `source` only a CUDA device can run."""
    out: dict[int, str] = {}

    def mark(node, why):
        for line in range(node.lineno, node.end_lineno + 1):
            out.setdefault(line, why)

    def walk(body, why, names):
        for st in body:
            if why:
                mark(st, why)
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(st.body, why, _bindings(st))
            elif isinstance(st, ast.If):
                test = ast.unparse(st.test)
                walk(st.body, why or (f"if {test}:" if only_cuda(st.test, names) else None), names)
                walk(st.orelse, why or (f"else of if {test}:" if always_on_cpu(st.test, names) else None), names)
                if not why and always_on_cpu(st.test, names) and st.body and \
                        isinstance(st.body[-1], (ast.Return, ast.Raise, ast.Continue, ast.Break)):
                    why = f"after `if {test}: {ast.unparse(st.body[-1]).split()[0]}`"
            else:  # for, while, with, try, class: each block of statements in turn
                for block in ("body", "orelse", "finalbody"):
                    walk(getattr(st, block, None) or [], why, names)
                for handler in getattr(st, "handlers", None) or []:
                    walk(handler.body, why, names)

    walk(ast.parse(source).body, None, {})
    return out


def cuda_only_expressions(source: str) -> list[tuple[int, str]]:
    """(line, expression) for every `a if <test> else b` whose test is only true on CUDA or always true on the
    CPU: a CUDA-only value on a line the CPU may run, which line coverage cannot see."""
    found = []
    for func in ast.walk(ast.parse(source)):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = _bindings(func)
            for node in ast.walk(func):
                if isinstance(node, ast.IfExp) and (only_cuda(node.test, names) or always_on_cpu(node.test, names)):
                    found.append((node.lineno, ast.unparse(node)))
    return sorted(set(found))


def enclosing_function(tree, line: int) -> str:
    name = "<module>"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= line <= node.end_lineno:
            name = node.name  # ast.walk is breadth-first: the innermost match comes last
    return name


@dataclass
class Line:
    file: str
    line: int
    function: str
    code: str
    why: str | None  # None: not CUDA-only

    def __str__(self):
        where = f"{self.file}:{self.line}"
        return f"{where:<26} {self.function + '()':<22} {self.code:<70} [{self.why or 'NOT CUDA-ONLY'}]"


def classify(measured: dict[str, tuple[list[int], list[int]]]) -> tuple[list[Line], list[Line]]:
    """(every line the CPU runs did not execute, with its CUDA-only branch or None; every line they executed
    that the AST calls CUDA-only: a contradiction, the AST rules would be wrong)."""
    missed, contradictions = [], []
    for rel, (statements, missing) in measured.items():
        source = (ROOT / rel).read_text()
        text, tree, cuda = source.splitlines(), ast.parse(source), cuda_only_lines(source)
        for n in statements:
            row = Line(rel, n, enclosing_function(tree, n), text[n - 1].strip(), cuda.get(n))
            if n in missing:
                missed.append(row)
            elif row.why:
                contradictions.append(row)
    return missed, contradictions


# --- the CPU runs under coverage ------------------------------------------------------------------------
def write_tiny_data(folder: Path) -> Path:
    """4 recordings (60-135 s), 8 rows in 4 folds (one patient each), and the csv variants the error runs need."""
    import numpy as np
    import pandas as pd

    from data.signal import EEG_COLUMNS, LABEL_COLS

    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        n = 200 * (60 + 25 * i)
        x = (np.cumsum(rng.normal(0, 3, (n, len(EEG_COLUMNS))), axis=0) * 0.2
             + rng.normal(0, 20, (n, len(EEG_COLUMNS)))).astype(np.float32)
        (folder / "train_eegs").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(x, columns=EEG_COLUMNS).to_parquet(folder / "train_eegs" / f"{1000 + i}.parquet", index=False)
        for k, off in enumerate([0, (n // 200 - 50) // 2]):
            votes = rng.integers(0, 4, 6)
            votes[rng.integers(0, 6)] += 3
            rows.append(dict(eeg_id=1000 + i, eeg_sub_id=k, eeg_label_offset_seconds=float(off), label_id=10 * (1000 + i) + k,
                             patient_id=i, **{c: int(v) for c, v in zip(LABEL_COLS, votes)}, fold=i % 4))
    df = pd.DataFrame(rows)
    for name in ("train.csv", "train_folded.csv", "train_folded_6k6.csv", "train_folded_6k6c.csv",
                 "train_folded_6k6c_1up.csv"):
        df.to_csv(folder / name, index=False)
    df.assign(fold=0).to_csv(folder / "one_fold.csv", index=False)  # fold 0 has no training rows
    pd.concat([df, df.assign(label_id=df["label_id"] + 100_000)]).to_csv(folder / "ddp_train.csv", index=False)  # 12 rows
    df[df.fold != 0].to_csv(folder / "no_fold0.csv", index=False)  # ... nor validation rows
    df.assign(patient_id=df.patient_id.where(df.fold != 1, 0)).to_csv(folder / "leak.csv", index=False)
    df.assign(eeg_id=df.eeg_id.where(df.index > 0, 9999)).to_csv(folder / "missing.csv", index=False)  # no parquet
    latent = df[df.fold == 0][["label_id"]].assign(**{c: 1 / 6 for c in LABEL_COLS})  # fold 0's rows only
    latent.to_csv(folder / "synthetic_latent.csv", index=False)
    return folder


def cpu_runs(work: Path) -> None:
    """The single-process runs (after the torchrun run), in this process; each checks what train.py says.
    train.py runs as the program it is (runpy, then its main with each command line): nothing imports it
    (docs/architecture.md), and a process per command line would take a minute more."""
    import runpy

    from engine import precision
    from utils import checkpoint as ckpt
    from utils.claim import Claim

    train_main = runpy.run_path(str(ROOT / "train.py"), run_name="train_cli")["main"]

    data, out = work / "data", work / "out"

    def base(fold, *extra):
        return ["-C", "cfg_2a", "--fold", fold, "--data_dir", str(data), "--output_dir", str(out), *SMALL, *extra]

    def run(argv, rc, *says):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                got = run_cli(train_main, argv)
            except SystemExit as err:  # stopped by a signal: 128 + its number
                got = err.code
        missing = [s for s in says if s not in buf.getvalue()]
        if got != rc or missing:
            raise SystemExit(f"cuda_only_lines: train.py {' '.join(argv)}: exit {got} (expected {rc}); "
                             f"did not say {missing}:\n{buf.getvalue()[-3000:]}")

    run([], 2, "no config given")
    run(base("0", "--stop_after_epochs", "x"), 2, "bad value for --stop_after_epochs")
    run(base("0", "--epochs", "0"), 2, "bad value for --epochs")
    run(base("0", "--optimizer", "SGD"), 2, "bad value for --optimizer")
    run(base("0", "--schedule", "linear"), 2, "bad value for --schedule")
    run(base("7"), 2, "is not a fold of")
    run(base("0", "--train_df", "one_fold.csv"), 2, "no training rows for fold 0")
    run(base("0", "--val_df", "no_fold0.csv"), 2, "no validation rows in fold 0")
    run(base("0", "--train_df", "leak.csv"), 2, "patient_id value(s) in both")
    run(["-C", "cfg_2a", "--fold", "0", "--data_dir", str(data), "--output_dir", str(out), "--neptune_mode", "off"],
        2, "is sized for a GPU", "bad value for --batch_size")
    run(base("0", "--amp_dtype", "float8"), 2, "bad value for --amp_dtype")  # after drawing a seed
    run(base("1", "--resume"), 2, "--resume without --seed needs exactly one interrupted run")
    run(base("1", "--resume", "--seed", "5"), 2, "nothing to resume")
    with Claim(ckpt.claim_file(ckpt.run_dir(out, "cfg_2a", 1, 5))):  # the run is held (utils/claim.py)
        run(base("1", "--seed", "5"), 2, "is being trained by another process")
    run(base("0", "--seed", str(2**32)), 2, "bad value for --seed")
    run(base("0", "--seed", "9", "--epochs", "1", "--grad_accumulation", "99"), 2, "would never step")
    # the torchrun run's 2-process fp32 run, its resume state rewritten as older versions wrote it (rank 0's
    # pending gradients only), resumed in one process in fp16, finishes with an oracle KL
    [resume_file] = (out / "cfg_2a" / "fold0").glob(f"seed*/{ckpt.RESUME_FILE}")
    state = ckpt.load(resume_file)
    state["grads"] = state.pop("grads_per_rank")[0]
    ckpt.save(state, resume_file)
    run(base("0", "--resume", "--epochs", "2", *TINY, "--amp_dtype", "float16"), 0, "resuming with changed config field(s)",
        "fp16 loss scaling starts afresh", "resuming a run of 2 process(es) with 1", "rank 0's pending gradients only",
        "oracle", "done:")
    fp16 = ["--seed", "2", *TINY, "--amp_dtype", "float16"]
    run(base("1", *fp16, "--epochs", "1"), 0, "warning: no oracle KL", "done:")
    run(base("1", *fp16, "--epochs", "1"), 2, "holds a finished run")
    run(base("1", *fp16, "--resume", "--force"), 2, "no interrupted --force run to resume")
    run(base("1", *fp16, "--epochs", "2", "--force", "--stop_after_epochs", "1"), 0, "--force: training into",
        "--resume --seed 2 --force")
    run(base("1", *fp16, "--epochs", "2", "--force", "--resume"), 0, "resuming", "done:")  # fp16 scaler restored
    cut = out / "cfg_2a" / "fold1" / "seed3" / "checkpoint.pth"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(b"PK\x03\x04 cut off")
    # a recording missing mid-training: the failed run's folder is removed
    run(base("1", "--seed", "3", *TINY, "--train_df", "missing.csv"), 2, "not a finished run; training it again",
        "9999.parquet: eeg file not found")
    if cut.parent.exists():
        raise SystemExit(f"cuda_only_lines: the failed run left {cut.parent}")
    stop_runs(run, base, out)
    if [precision.describe(d) for d in ("float16", "bfloat16", "float32")] != ["fp16", "bf16", "fp32"]:
        raise SystemExit("cuda_only_lines: engine.precision.describe changed")


def stop_runs(run, base, out: Path) -> None:
    """Stops inside and at the end of an epoch (3 batches per epoch here): --stop_after_steps, a refused and a
    good resume, and real SIGTERMs sent from inside the loop (an optimiser step; a validation)."""
    import signal

    from engine import step
    from utils import checkpoint as ckpt
    from utils import distributed

    def signalled(argv, module, name, says):
        original = getattr(module, name)

        def send(*a, **k):
            setattr(module, name, original)
            os.kill(os.getpid(), signal.SIGTERM)
            return original(*a, **k)
        setattr(module, name, send)
        try:
            run(argv, 128 + signal.SIGTERM, says)
        finally:
            setattr(module, name, original)

    two = ["--seed", "12", "--epochs", "2", "--grad_accumulation", "1", "--eval_epochs", "1"]
    run(base("0", *two, "--stop_after_steps", "2"), 0, "stopped in epoch 1 after batch 2/3 (--stop_after_steps)")
    run(base("0", *two, "--resume", "--batch_size", "1"), 2, "resume it with that batch size")
    path = ckpt.run_dir(out, "cfg_2a", 0, 12) / ckpt.RESUME_FILE
    state = ckpt.load(path)
    ckpt.save({**state, "epoch_loss": state["epoch_loss"] * 2}, path)
    run(base("0", *two, "--resume"), 2, "resume it with 2")
    ckpt.save(state, path)
    run(base("0", *two, "--resume"), 0, "resuming", "in epoch 1 after batch 2/3", "done:")
    run(base("0", *two, "--seed", "13", "--stop_after_steps", "3"), 0, "after epoch 1 (--stop_after_steps)")
    signalled(base("0", *two, "--seed", "14"), step, "optimizer_step", "stopped by SIGTERM in epoch 1 after batch 1/3")
    signalled(base("0", *two, "--seed", "15"), distributed, "sync_buffers", "stopped by SIGTERM after epoch 1")


def measure(work: Path) -> dict[str, tuple[list[int], list[int]]]:
    """Run the CPU runs under coverage in `work`; {file: (its statements' lines, the lines none of them executed)}."""
    import coverage

    write_tiny_data(work / "data")
    include = ",".join(str(ROOT / f) for f in FILES)
    cov_run = [sys.executable, "-m", "coverage", "run", "-p", f"--data-file={work / '.coverage'}", f"--include={include}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ddp = ["-C", "cfg_2a", "--fold", "0", "--data_dir", str(work / "data"), "--output_dir", str(work / "out"), *SMALL,
           "--epochs", "2", "--stop_after_epochs", "1", "--eval_epochs", "1", "--grad_accumulation", "2",
           "--train_df", "ddp_train.csv", "--log_every", "1"]  # 3 batches per rank: the ranks agree on stopping
    for argv, extra_env in (
            ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
              *cov_run, str(ROOT / "train.py"), *ddp], {"OMP_NUM_THREADS": "1"}),
            ([*cov_run, str(Path(__file__).resolve()), "--cpu-runs", str(work)], {})):
        res = subprocess.run(argv, cwd=work, env={**env, **extra_env}, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    cov = coverage.Coverage(data_file=str(work / ".coverage"))
    cov.combine([str(work)])
    return {f: (sorted(a[1]), sorted(a[3])) for f in FILES for a in [cov.analysis2(str(ROOT / f))]}


def main(argv=None) -> None:
    ap = ArgumentParser(prog="cuda_only_lines.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", default=None, help="work folder to keep (data, runs, coverage data); default: a temporary one")
    ap.add_argument("--cpu-runs", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cpu_runs:
        return cpu_runs(Path(args.cpu_runs))
    work = Path(args.keep or tempfile.mkdtemp(prefix="cuda-only-lines-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, contradictions = classify(measure(work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(rows, contradictions))
    bad = [r for r in rows if r.why is None]
    if bad or contradictions:
        raise SystemExit(f"cuda_only_lines: {len(bad)} line(s) the CPU runs did not execute are NOT CUDA-ONLY (make a CPU "
                         f"run execute them); {len(contradictions)} line(s) the AST calls CUDA-only ran on the CPU")


def report(rows: list[Line], contradictions: list[Line]) -> str:
    out = [f"Lines of {', '.join(FILES)} that the CPU runs did not execute ({len(rows)}):", *(f"  {r}" for r in rows)]
    if contradictions:
        out += ["Lines the AST calls CUDA-only that the CPU runs executed (the rules are wrong):",
                *(f"  {r}" for r in contradictions)]
    out.append("Values only CUDA takes, on lines the CPU runs (line coverage cannot see them):")
    for rel in FILES:
        out += [f"  {rel}:{n:<5} {expr}" for n, expr in cuda_only_expressions((ROOT / rel).read_text())]
    if not contradictions and rows and all(r.why for r in rows):
        out.append("Every line the CPU runs did not execute is CUDA-only.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(run_cli(main))

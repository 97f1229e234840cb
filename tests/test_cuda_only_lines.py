"""Which lines of train.py, engine/precision.py and utils/distributed.py only CUDA executes
(scripts/cuda_only_lines.py): CPU trainings under coverage skip no line outside a CUDA-only branch, the
branches are found from the source, and those rules are checked on a source written to test them."""
from scripts import cuda_only_lines as col

# lines ending in "# CUDA" are the ones only a CUDA device can run; every other line can run on the CPU
SOURCE = '''
import torch


def f(x, device):
    cuda = torch.cuda.is_available()
    if cuda:
        a = 1  # CUDA
    else:
        a = 2
    if torch.device(device).type != "cuda":
        return a
    b = (3,  # CUDA
         4)  # CUDA
    return b  # CUDA


def g(x):
    if x.device.type == "cpu" and x.is_contiguous():
        return 1
    y = 2  # after a guard not always true on the CPU
    if not x.device.type == "cpu":
        y = 3  # CUDA
    if x.device.type == "cpu" or x.is_contiguous():
        pass
    else:
        y = 4  # CUDA
    if x.device.type == "cuda" and x.is_contiguous():
        y = 5  # CUDA
    if x.device.type == "cuda" or x.is_contiguous():
        y = 6
    for i in range(2):
        if x.device.type == "cpu":
            continue
        y = i  # CUDA
    with torch.no_grad():
        if x.device.type == "cuda":
            torch.cuda.synchronize()  # CUDA
    torch.cuda.synchronize()  # naming cuda does not make a line CUDA-only
    cuda = x.is_cuda
    if cuda:  # a name bound to something else
        y = 7
    return y
'''


def test_branch_rules_on_a_source_written_to_test_them():
    lines = SOURCE.splitlines()
    want = {n for n, text in enumerate(lines, 1) if text.endswith("# CUDA")}
    assert set(col.cuda_only_lines(SOURCE)) == want
    exprs = col.cuda_only_expressions("def h(d, cuda=None):\n    ok = torch.cuda.is_available()\n"
                                      "    return ('nccl' if ok else 'gloo', 1 if d.type == 'cpu' else 2, 3 if cuda else 4)\n")
    assert [e for _, e in exprs] == ["'nccl' if ok else 'gloo'", "1 if d.type == 'cpu' else 2"]


def test_every_line_the_cpu_trainings_skip_is_cuda_only(tmp_path):
    """A 2-process gloo run and single-process fp16/fp32 runs (resume, --force, failures, every error) under
    coverage (about 30 s on 2 cores). `pytest -s` prints the list."""
    measured = col.measure(tmp_path)
    rows, contradictions = col.classify(measured)
    print("\n" + col.report(rows, contradictions))
    assert not contradictions  # a line the AST calls CUDA-only ran on the CPU: the rules are wrong
    assert [str(r) for r in rows if r.why is None] == []  # a line the CPU skips outside a CUDA-only branch
    assert sum(len(s) for s, _ in measured.values()) > 300  # the three files were measured
    # README.md's GPU paragraph names these; a new CUDA-only line belongs there too
    assert {(r.file, r.function) for r in rows} == {("engine/precision.py", "resolve_amp_dtype"),
                                                    ("engine/precision.py", "setup_backend"),
                                                    ("utils/distributed.py", "setup")}

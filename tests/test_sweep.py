"""sweep/runs.py and sweep/slurm.py without a cluster: the run list, option parsing, the generated sbatch
scripts (executed by bash with a recording stand-in for python), submission order and dependency (a
recording stand-in for sbatch), the array task's re-check of a run, and the blend job's check."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from utils import checkpoint as ckpt
from sweep import cli, slurm
from sweep import runs as sweep
from utils.config import ConfigError

RECORD = """#!/usr/bin/env bash
# records its arguments (NUL-separated, one call after another; a lock keeps parallel calls apart)
{{ flock 9; printf '%s\\0' "$@" >> "$RECORD_TO"; printf '\\n' >> "$RECORD_TO"; }} 9>> "$RECORD_TO.lock"
{extra}
"""


def recorder(tmp_path, name, extra=""):
    path = tmp_path / name
    path.write_text(RECORD.format(extra=extra))
    path.chmod(0o755)
    return path


def recorded(path) -> list[list[str]]:
    return [call.split("\0") for call in path.read_text().split("\0\n")[:-1]]


def test_the_reference_runs():
    runs = sweep.make_runs()
    assert len(runs) == 144 and len(set(runs)) == 144
    assert Counter(r.config for r in runs) == {c: 16 for c in sweep.CONFIGS}
    first = [(r.fold, r.seed) for r in runs[:16]]
    assert first == [(f, s) for f in range(4) for s in (1001, 1002)] + [(-1, s) for s in range(2001, 2009)]
    assert [r.config for r in runs[::16]] == sweep.CONFIGS  # config after config, in the solution's order


def test_selection_and_demo_runs():
    assert [(r.fold, r.seed) for r in sweep.make_runs(["cfg_5a"], [-1])] == [(-1, s) for s in range(2001, 2009)]
    demo = sweep.make_runs(["cfg_2a", "cfg_1"], [1, 0], [7])  # the demo's own order, folds and seed
    assert [(r.config, r.fold, r.seed) for r in demo] == [("cfg_2a", 1, 7), ("cfg_2a", 0, 7), ("cfg_1", 1, 7),
                                                          ("cfg_1", 0, 7)]
    with pytest.raises(ConfigError, match="unknown config 'cfg_9'"):
        sweep.make_runs(["cfg_1", "cfg_9"])
    with pytest.raises(ConfigError, match="bad fold 4"):
        sweep.make_runs(folds=[4])


def test_options_and_pass_through(tmp_path):
    opts = cli.parse_args(["--configs", "cfg_1,cfg_3", "--output-dir", "a", "--gpus=0,1", "--dry-run", "--",
                           "--output_dir", "b", "--lr", "-1e-3", "--slurm", "--epochs=1"], cwd=tmp_path)
    assert opts.configs == ["cfg_1", "cfg_3"] and opts.gpus == ["0", "1"] and opts.dry_run and not opts.slurm
    # after --: train.py's, as given; the paths once each, absolute, the last one winning (after -- beats before)
    assert opts.train_args == ["--lr", "-1e-3", "--slurm", "--epochs=1", "--output_dir", str(tmp_path / "b")]
    assert opts.output_dir == str(tmp_path / "b") and opts.data_dir == str(sweep.ROOT / "datamount")
    opts = cli.parse_args(["--data_dir", "d1", "--", "--data-dir=d2", "--output-dir", "/abs/o", "--data_dir", "d3"],
                          cwd=tmp_path)
    assert (opts.data_dir, opts.output_dir) == (str(tmp_path / "d3"), "/abs/o")
    assert opts.train_args == ["--data_dir", str(tmp_path / "d3"), "--output_dir", "/abs/o"]
    default = cli.parse_args([])
    assert default.output_dir == str(sweep.ROOT / "output") and default.train_args == []  # the repository's
    for bad, message in ((["--shard", "2/2"], "0 <= i < n"), (["--max-parallel", "0"], "integer >= 1"),
                         (["--configs"], "needs a value"), (["--", "--output_dir"], "--output_dir needs a value"),
                         (["--epochs", "1"], "unknown option --epochs: train.py's arguments go after `--`, e.g. "
                                             "./run_train.sh [options] -- --epochs 1"),
                         (["--partiton", "gpu"], "unknown option --partiton: did you mean --partition?"),
                         (["--seed=3"], "unknown option --seed"), (["cfg_1"], "unexpected argument 'cfg_1'")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            cli.parse_args(bad)


def test_an_unknown_option_before_the_separator_starts_nothing(tmp_path, monkeypatch, capsys):
    """A typo (--partiton) or a train.py option before `--`: one line, exit 2, nothing submitted or trained."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder(bin_dir, "sbatch", extra="echo 101")
    fake = recorder(tmp_path, "python")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHON", str(fake))
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "calls"))
    out = tmp_path / "out"
    for args in (["--slurm", "--partiton", "gpu"], ["--slurm", "--partition", "gpu", "--epochs", "1"],
                 ["--configs", "cfg_1", "--folds", "0", "--lr", "1e-4"]):
        assert cli.cli([*args, "--output-dir", str(out), "--", "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: unknown option --") and len(err.strip().splitlines()) == 1, err
        assert "nothing was started" in err
    assert not (tmp_path / "calls").exists() and not out.exists()
    # the same options after -- go to train.py (here the recording stand-in) as they are
    assert cli.cli(["--configs", "cfg_1", "--folds", "0", "--seeds", "5", "--output-dir", str(out), "--", "--lr",
                    "1e-4"]) == 0
    assert recorded(tmp_path / "calls") == [["train.py", "-C", "cfg_1", "--fold", "0", "--seed", "5", "--lr", "1e-4",
                                             "--output_dir", str(out)]]


def test_bad_input_is_one_line(tmp_path, capsys):
    cases = ((["--configs", "cfg_9"], "unknown config 'cfg_9'"), (["--shard", "1/x"], "--shard expects i/n"),
             (["--partiton", "gpu"], "did you mean --partition?"),
             (["--folds", "5"], "bad fold 5"), (["--slurm", "--shard", "0/2"], "--shard and --gpus are for"),
             (["--slurm", "--time", "soon"], "--time expects"), (["--gpus"], "--gpus needs a value"),
             (["--slurm", "--time", "2", "--signal-grace", "120"], "--signal-grace 120 s is not below the --time limit 2"),
             (["--slurm", "--signal-grace", "70000"], "from 0 to 65535"), (["--signal-grace", "-1"], "integer >= 0"))
    for args, message in cases:
        assert cli.cli(["--dry-run", *args, "--output_dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def slurm_opts(tmp_path, *extra):
    return cli.parse_args(["--slurm", "--output_dir", str(tmp_path / "out"), "--data_dir", "/data/hms", *extra])


def test_array_script_runs_each_task_with_its_run_and_exact_arguments(tmp_path):
    tricky = ["--spec_args", "{'n_mels': 16, 'f_max': 40.0}", "--name", "a b", "--note", "it's $HOME \"q\""]
    opts = slurm_opts(tmp_path, "--max-parallel", "3", "--gpus-per-run", "2", "--partition", "gpu", "--time",
                      "1-00:00:00", "--sbatch-arg=--account=hms", "--", *tricky)
    todo = sweep.make_runs(["cfg_1", "cfg_2a"], [0, 1, 2, 3], [1001])
    text = slurm.array_script(todo, opts)
    for line in ("#SBATCH --array=0-7%3", "#SBATCH --gres=gpu:2", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1-00:00:00", "#SBATCH --account=hms", "#SBATCH --cpus-per-task=16",
                 f"#SBATCH --output={tmp_path}/out/logs/slurm/train_%A_%a.out", f"#SBATCH --chdir={sweep.ROOT}"):
        assert line in text.splitlines()
    script = tmp_path / "array.sbatch"
    script.write_text(text)
    fake = recorder(tmp_path, "python")
    env = {**os.environ, "PYTHON": str(fake), "RECORD_TO": str(tmp_path / "calls"), "SLURM_ARRAY_TASK_ID": "5"}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)
    [call] = recorded(tmp_path / "calls")  # task 5 = cfg_2a fold 1; its state is checked by `sweep task`
    assert call == ["-m", "sweep", "task", "cfg_2a", "1", "1001", "--nproc", "2", "--",
                    *tricky, "--data_dir", "/data/hms", "--output_dir", str(tmp_path / "out")]


def test_data_and_output_dir_after_the_separator_are_the_sweeps_too(tmp_path, capsys):
    """`-- --data-dir D --output-dir O`: the runs' states, the train.py commands, both SLURM scripts, the
    blend job's `sweep check` and blend_weights.py all use D and O (not output/ and datamount/)."""
    data, out = tmp_path / "d", tmp_path / "o"
    ckpt.save({"epoch": 0}, sweep.SweepRun("cfg_1", 0, 1001).folder(out) / ckpt.CHECKPOINT_FILE)
    pick = ["--configs", "cfg_1", "--folds", "0"]
    paths = ["--", "--data-dir", str(data), "--output-dir", str(out)]
    assert cli.cli(["--dry-run", *pick, *paths]) == 0
    text = capsys.readouterr()
    assert text.out.strip().splitlines() == [f"{sweep.python_cmd()} train.py -C cfg_1 --fold 0 --seed 1002 "
                                             f"--data_dir {data} --output_dir {out}"]
    assert "skip (finished): cfg_1 fold 0 seed 1001" in text.err  # its state was read under O

    assert cli.cli(["--slurm", "--dry-run", *pick, *paths]) == 0
    text = capsys.readouterr().out
    array = text[text.index(f"# ---- {out}/slurm/train_array.sbatch"):text.index("# ---- ", 10)]
    blend = text[text.index(f"# ---- {out}/slurm/blend.sbatch"):]
    assert "#SBATCH --array=0-0\n" in array and f"#SBATCH --output={out}/logs/slurm/train_%A_%a.out" in array
    assert f"  --data_dir {data}\n  --output_dir {out}\n" in array  # TRAIN_ARGS
    assert f"#SBATCH --output={out}/logs/slurm/blend_%j.out" in blend
    script = tmp_path / "blend.sbatch"
    script.write_text(blend)
    fake = recorder(tmp_path, "python")
    subprocess.run(["bash", str(script)], env={**os.environ, "PYTHON": str(fake), "RECORD_TO": str(tmp_path / "calls")},
                   check=True, timeout=30)
    check, blend_call = recorded(tmp_path / "calls")
    assert check == ["-m", "sweep", "check", "--configs", "cfg_1", "--folds", "0", "--output_dir", str(out)]
    assert blend_call[:5] == ["scripts/blend_weights.py", "--data-dir", str(data), "--output-dir", str(out)]

    # `sweep check` reads O from after -- as well (the last one wins)
    res = subprocess.run([sys.executable, "-m", "sweep", "check", *pick, "--output-dir", "elsewhere", "--",
                          "--output_dir", str(out)], cwd=sweep.ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and f"check: 1 of 2 run(s) finished under {out}" in res.stdout, res.stdout + res.stderr
    assert "NOT FINISHED: cfg_1 fold 0 seed 1002" in res.stdout


def test_array_tasks_are_warned_before_the_time_limit_and_may_requeue(tmp_path):
    lines = slurm.array_script(sweep.make_runs(["cfg_3"]), slurm_opts(tmp_path, "--time", "4:00:00")).splitlines()
    assert {"#SBATCH --signal=B:USR1@180", "#SBATCH --requeue", "#SBATCH --open-mode=append"} <= set(lines)
    lines = slurm.array_script(sweep.make_runs(["cfg_3"]), slurm_opts(tmp_path, "--signal-grace", "0")).splitlines()
    assert not [ln for ln in lines if ln.startswith(("#SBATCH --signal", "#SBATCH --requeue"))]
    lines = slurm.array_script(sweep.make_runs(["cfg_3"]), slurm_opts(tmp_path, "--time", "1")).splitlines()
    assert "#SBATCH --signal=B:USR1@45" in lines  # a one-minute limit: warned after 15 s
    blend = slurm.blend_script(sweep.make_runs(["cfg_3"]), slurm_opts(tmp_path))
    assert "--signal" not in blend and "--requeue" not in blend  # the blend is short and must not loop


def test_slurm_time_limits_in_seconds():
    cases = {"1": 60, "2:30": 150, "1:00:00": 3600, "1-0": 86400, "1-2:3": 93780, "0-0:2:5": 125, "12:00:00": 43200}
    assert {t: slurm.time_seconds(t) for t in cases} == cases


def test_cpu_array_has_no_gpu_request_and_no_throttle_unless_asked(tmp_path):
    text = slurm.array_script(sweep.make_runs(["cfg_3"]), slurm_opts(tmp_path, "--gpus-per-run", "0"))
    assert "#SBATCH --array=0-15\n" in text and "--gres" not in text and "--nproc" not in text


def test_submission_writes_both_scripts_and_the_blend_depends_on_the_array(tmp_path, monkeypatch, capsys):
    ckpt.save({"epoch": 0}, sweep.SweepRun("cfg_4", 0, 1002).folder(tmp_path / "out") / ckpt.CHECKPOINT_FILE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder(bin_dir, "sbatch", extra='[ -f "$RECORD_TO.n" ] && echo 102 || { echo 101; touch "$RECORD_TO.n"; }')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "calls"))
    opts = slurm_opts(tmp_path, "--configs", "cfg_4", "--folds", "0,-1", "--blend-partial")
    assert slurm.submit_sweep(opts, opts.runs()) == 0
    folder = tmp_path / "out" / "slurm"
    assert recorded(tmp_path / "calls") == [["--parsable", str(folder / "train_array.sbatch")],
                                            ["--parsable", "--dependency=afterany:101", str(folder / "blend.sbatch")]]
    assert "#SBATCH --array=0-8\n" in (folder / "train_array.sbatch").read_text()  # 10 runs, 1 finished
    blend = (folder / "blend.sbatch").read_text()
    assert (f"-m sweep check --configs cfg_4 --folds 0,-1 --output_dir {tmp_path / 'out'} --partial || exit 1"
            in blend)
    assert (f"scripts/blend_weights.py --data-dir /data/hms --output-dir {tmp_path / 'out'} --configs cfg_4 --folds 0"
            in blend)
    out = capsys.readouterr()
    assert "array job 101: 9 run(s) (1 of 10 selected already finished)" in out.out
    assert f"task 101_8: cfg_4 fold -1 seed 2008 -> log {tmp_path}/out/logs/cfg_4_fold-1_seed2008.log" in out.out
    assert "blend job 102: after array 101 ends (afterany)" in out.out
    assert "skip (finished): cfg_4 fold 0 seed 1002" in out.err


def test_task_rechecks_the_run_when_it_starts(tmp_path):
    fake = recorder(tmp_path, "python", extra='echo "training $*"')
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "RECORD_TO": str(tmp_path / "calls"), "SLURM_ARRAY_JOB_ID": "7",
           "SLURM_ARRAY_TASK_ID": "1"}

    def task(*run):
        return subprocess.run([sys.executable, "-m", "sweep", "task", *run, "--", "--output_dir", str(out)],
                              cwd=sweep.ROOT, env=env, capture_output=True, text=True, timeout=120)

    (out / "cfg_1/fold2/seed1001").mkdir(parents=True)
    (out / "cfg_1/fold2/seed1001" / ckpt.RESUME_FILE).write_bytes(b"x")  # interrupted: resumes
    ckpt.save({"epoch": 0}, out / "cfg_1/fold3/seed1001" / ckpt.CHECKPOINT_FILE)  # finished: never trained again
    res = task("cfg_1", "2", "1001")
    assert res.returncode == 0 and "was interrupted: resuming" in res.stdout, res.stderr
    res = task("cfg_1", "3", "1001")
    assert res.returncode == 0 and "was finished: already finished, not trained again" in res.stdout
    assert recorded(tmp_path / "calls") == [["train.py", "-C", "cfg_1", "--fold", "2", "--seed", "1001", "--resume",
                                             "--output_dir", str(out)]]
    log = (out / "logs" / "cfg_1_fold2_seed1001.log").read_text()
    assert log.startswith("=== sweep task 7_1 on ") and "training train.py" in log
    state = subprocess.run([sys.executable, "-m", "sweep", "state", "cfg_1", "3", "1001", "--output_dir",
                            str(out)], cwd=sweep.ROOT, capture_output=True, text=True, timeout=120)
    assert state.stdout.strip() == ckpt.FINISHED


def test_check_names_each_unfinished_run_and_stops_a_partial_blend(tmp_path, capsys):
    out = tmp_path / "out"
    fin, cut, empty = sweep.make_runs(["cfg_5b"], [0], [1, 2, 3])
    ckpt.save({"epoch": 0}, fin.folder(out) / ckpt.CHECKPOINT_FILE)
    (cut.folder(out)).mkdir(parents=True)
    (cut.folder(out) / ckpt.RESUME_FILE).write_bytes(b"x")
    (out / "logs" / "slurm").mkdir(parents=True)
    cut.log(out).write_text("=== sweep task 9_1 on node3: cfg_5b fold 0 seed 2 was not started\nepoch 1/16: 40%")
    (out / "logs" / "slurm" / "train_9_1.out").write_text("slurmstepd: error: *** JOB 10 ON node3 CANCELLED AT 12:00 "
                                                          "DUE TO TIME LIMIT ***\n")
    empty.folder(out).mkdir(parents=True)
    (empty.folder(out) / ckpt.CHECKPOINT_FILE).write_bytes(b"")
    assert slurm.check_finished([fin, cut, empty], out) == 1
    text = capsys.readouterr()
    assert "check: 1 of 3 run(s) finished" in text.out
    assert "NOT FINISHED: cfg_5b fold 0 seed 2 (interrupted); task 9_1 ended with: slurmstepd: error: *** JOB 10 ON " \
           "node3 CANCELLED AT 12:00 DUE TO TIME LIMIT ***" in text.out
    assert "cfg_5b_fold0_seed2.log: epoch 1/16: 40%" in text.out
    assert "NOT FINISHED: cfg_5b fold 0 seed 3 (not started, checkpoint.pth: zero-length file); no log" in text.out
    assert "no blend on a partial set" in text.err
    assert slurm.check_finished([fin, cut, empty], out, partial=True) == 0


def test_local_runner_slots_and_no_new_start_after_a_failure(tmp_path, monkeypatch):
    fake = recorder(tmp_path, "python", extra='echo "threads=$OMP_NUM_THREADS"; [ "$7" != 2 ] || exit 3; sleep 0.3')
    monkeypatch.setenv("PYTHON", str(fake))
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "calls"))
    runs = sweep.make_runs(["cfg_1"], [0], [1, 2, 3, 4])
    jobs = [sweep.Job(r, str(tmp_path / "out"), ["--epochs", "1"]) for r in runs]
    results = sweep.run_jobs(jobs, [{"OMP_NUM_THREADS": "1"}] * 2)
    assert sorted((r.job.run.seed, r.returncode) for r in results) == [(1, 0), (2, 3)]  # seeds 3, 4 never started
    log = (tmp_path / "out/logs/cfg_1_fold0_seed1.log").read_text().splitlines()
    assert log[0].startswith(f"{sweep.LOCAL_HEADER} on ") and log[0].endswith("cfg_1 fold 0 seed 1 was not started")
    assert log[1:] == ["threads=1"]
    assert len(recorded(tmp_path / "calls")) == 2


# --- --overrides FILE: per-config train.py arguments --------------------------------------------------
def write_json(path, text):
    path.write_text(text)
    return path


def test_overrides_file_gives_each_run_its_configs_arguments_and_the_command_line_wins(tmp_path, monkeypatch,
                                                                                        capsys):
    """"*" first, then the config's entry (a mapping or a list of train.py arguments), then the arguments
    after `--`: locally, in the dry run and in each task of one SLURM array over both configs."""
    spec = {"sample_rate": 200, "n_fft": 256, "win_length": 128, "hop_length": 128, "n_mels": 16, "f_min": 0.5,
            "f_max": 20.0}
    file = write_json(tmp_path / "over.json", """{
      "*": {"num_workers": 1, "lr": 0.002},
      "cfg_1": {"batch_size": 4, "pretrained": false, "spec_args": %s, "backbone": "a b"},
      "cfg_2a": ["--batch_size", "6", "--epochs=3", "--sq_dim", "16"]
    }""" % str(spec).replace("'", '"'))
    fake = recorder(tmp_path, "python")
    monkeypatch.setenv("PYTHON", str(fake))
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "calls"))
    out = tmp_path / "out"
    pick = ["--configs", "cfg_1,cfg_2a", "--folds", "0", "--seeds", "5", "--overrides", "over.json"]
    after = ["--", "--lr", "1e-4", "--output-dir", str(out)]
    head = {c: ["train.py", "-C", c, "--fold", "0", "--seed", "5"] for c in ("cfg_1", "cfg_2a")}
    want = {"cfg_1": [*head["cfg_1"], "--num_workers", "1", "--lr", "0.002", "--batch_size", "4", "--pretrained",
                      "False", "--spec_args", repr(spec), "--backbone", "a b", "--lr", "1e-4", "--output_dir",
                      str(out)],
            "cfg_2a": [*head["cfg_2a"], "--num_workers", "1", "--lr", "0.002", "--batch_size", "6", "--epochs=3",
                       "--sq_dim", "16", "--lr", "1e-4", "--output_dir", str(out)]}
    assert cli.parse_args([*pick, *after], cwd=tmp_path).overrides.file == str(file)  # from the caller's folder

    assert cli.cli([*pick, "--dry-run", *after]) == 2  # relative to this process's folder: not there
    assert "cannot read the overrides file" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert cli.cli([*pick, "--dry-run", *after]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{fake} {shlex.join(want[c])}" for c in ("cfg_1", "cfg_2a")]
    assert cli.cli([*pick, *after]) == 0
    assert recorded(tmp_path / "calls") == [want["cfg_1"], want["cfg_2a"]]

    (tmp_path / "calls").unlink()
    opts = cli.parse_args(["--slurm", *pick, *after])
    script = write_json(tmp_path / "array.sbatch", slurm.array_script(opts.runs(), opts))
    file.write_text("edited after submission")  # the script holds the arguments as they were
    for task in ("1", "0"):
        env = {**os.environ, "PYTHON": str(fake), "RECORD_TO": str(tmp_path / "calls"), "SLURM_ARRAY_TASK_ID": task}
        subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)
    task = [["-m", "sweep", "task", c, "0", "5", "--", *want[c][7:]] for c in ("cfg_2a", "cfg_1")]
    assert recorded(tmp_path / "calls") == task


def test_a_bad_overrides_file_is_one_line_naming_it_and_starts_nothing(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder(bin_dir, "sbatch", extra="echo 101")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHON", str(recorder(tmp_path, "python")))
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "calls"))
    file, out = tmp_path / "o.json", tmp_path / "out"
    cases = (('{"cfg_2": {"epochs": 1}}', "unknown config 'cfg_2' (did you mean cfg_2"),
             ('{"resnet": {}}', "unknown config 'resnet' (the configs are cfg_1, "),
             ('{"cfg_1": {"bach_size": 8}}', "cfg_1: unknown config field 'bach_size' (not defined in cfg_1; did "
                                             "you mean batch_size?)"),
             ('{"*": ["--epochs", "1", "--sq_dim", "8"]}', '"*" (applied to cfg_1): unknown config field \'sq_dim\''),
             ('{"cfg_1": {"epochs": "many"}}', "cfg_1: bad value for --epochs"),
             ('{"cfg_1": ["--epochs"]}', "cfg_1: --epochs needs a value"),
             ('{"cfg_1": ["epochs", "1"]}', "cfg_1: expected --field value, got 'epochs'"),
             ('{"cfg_1": ["--epochs", 1]}', "cfg_1: expected a mapping"),
             ('{"cfg_1": {"data_dir": "d"}}', "'data_dir' is the sweep's to choose (give --data-dir to"),
             ('{"cfg_1": ["--output-dir", "o"]}', "'output_dir' is the sweep's to choose (give --output-dir"),
             ('{"*": {"seed": 3}}', "'seed' is the sweep's to choose (give --seeds"),
             ('{"cfg_1": {}, "cfg_1": {"epochs": 1}}', "'cfg_1' is given twice"),
             ('{"cfg_1": {"epochs": 1,}}', "not JSON (Expecting property name enclosed in double quotes at line 1"),
             ('["--epochs", "1"]', "expected a JSON object mapping a config"))
    for text, message in cases:
        file.write_text(text)
        for mode in (["--slurm"], []):  # before sbatch is called, before any train.py starts
            assert cli.cli([*mode, "--configs", "cfg_1", "--overrides", str(file), "--output-dir", str(out)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {file}: ") and message in err and len(err.strip().splitlines()) == 1, err
    file.unlink()
    assert cli.cli(["--overrides", str(file), "--output-dir", str(out)]) == 2
    assert f"cannot read the overrides file {file}: No such file" in capsys.readouterr().err
    assert not (tmp_path / "calls").exists() and not out.exists()


LAUNCHER = """
import signal, subprocess, sys, time
out = sys.argv[1]
child = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[1], 'w').close(), "
         "sys.exit(0))); open(sys.argv[1] + '.ready', 'w').close(); time.sleep(60)")
procs = [subprocess.Popen([sys.executable, "-c", child, f"{out}/rank{r}"]) for r in range(2)]
signal.signal(signal.SIGTERM, lambda *a: open(f"{out}/launcher", "w").close())
import os
while not all(os.path.exists(f"{out}/rank{r}.ready") for r in range(2)):
    time.sleep(0.05)
open(f"{out}/ready", "w").close()
for p in procs:
    p.wait()
"""


def test_the_time_limit_warning_goes_to_torchruns_ranks_not_to_torchrun(tmp_path, monkeypatch):
    """torchrun SIGKILLs its ranks 30 s after passing on a SIGTERM, so the task signals the ranks themselves."""
    monkeypatch.chdir(tmp_path)
    job = sweep.Job(sweep.SweepRun("cfg_1", 0, 1001), str(tmp_path / "out"), [], launcher=["-c", LAUNCHER, str(tmp_path)])
    running = sweep._Running(job, 0, {}, tee=False)
    try:
        end = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < end and running.proc.poll() is None
            time.sleep(0.1)
        assert sweep.signal_running(signal.SIGTERM) == 2
        assert running.proc.wait(timeout=60) == 0  # it ended because its two ranks did
        assert (tmp_path / "rank0").exists() and (tmp_path / "rank1").exists() and not (tmp_path / "launcher").exists()
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
        running.finish()

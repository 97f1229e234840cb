"""run_train.sh: the 144 runs of the reproduction, sharding, skipping/resuming, GPU slots, failure reporting."""
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from utils import checkpoint as ckpt
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_train.sh"
CONFIGS = ["cfg_1", "cfg_2a", "cfg_2b", "cfg_3", "cfg_4", "cfg_5a", "cfg_5b", "cfg_5c", "cfg_5d"]
LINE = re.compile(r"^python train\.py -C (cfg_\w+) --fold (-?\d) --seed (\d+)( --resume)?( .*)?$")


def sh(*args, env=None, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": "python", **(env or {})})


def runs(res):
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [m.groups() for m in parsed]


def test_dry_run_lists_the_144_runs(tmp_path):
    rs = runs(sh("--dry-run", "--output_dir", str(tmp_path)))
    assert len(rs) == 144 and len({r[:3] for r in rs}) == 144
    assert Counter(r[0] for r in rs) == {c: 16 for c in CONFIGS}
    per_cfg_fold = Counter((r[0], r[1]) for r in rs)
    assert all(per_cfg_fold[(c, f)] == 2 for c in CONFIGS for f in "0123")
    assert all(per_cfg_fold[(c, "-1")] == 8 for c in CONFIGS)
    assert rs == runs(sh("--dry-run", "--output_dir", str(tmp_path)))  # explicit, repeatable seeds


def test_shards_partition_the_runs_and_extra_args_pass_through(tmp_path):
    full = runs(sh("--dry-run", "--output_dir", str(tmp_path)))
    shards = [runs(sh("--dry-run", "--shard", f"{i}/3", "--", "--epochs", "1", "--output_dir", str(tmp_path)))
              for i in range(3)]
    assert [len(s) for s in shards] == [48, 48, 48]
    assert sorted(r[:3] for s in shards for r in s) == sorted(r[:3] for r in full)
    assert shards[1][0][:3] == full[1][:3] and shards[1][1][:3] == full[4][:3]  # every 3rd run from run 1
    assert all(r[4] == f" --epochs 1 --output_dir {tmp_path}" for s in shards for r in s)
    bad = sh("--dry-run", "--shard", "3/3")
    assert bad.returncode == 2 and "--shard" in bad.stderr


def test_train_options_go_after_the_separator_and_a_typo_submits_nothing(tmp_path):
    bad = sh("--dry-run", "--output_dir", str(tmp_path), "--epochs", "1")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1, bad.stderr
    assert "unknown option --epochs: train.py's arguments go after `--`" in bad.stderr
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text(f"#!/bin/sh\necho called >> {tmp_path}/sbatch_calls\necho 1\n")
    sbatch.chmod(0o755)
    typo = sh("--slurm", "--partiton", "gpu", "--", "--output_dir", str(tmp_path / "out"),
              env={"PATH": f"{sbatch.parent}:{os.environ['PATH']}"})
    assert typo.returncode == 2 and "unknown option --partiton: did you mean --partition?" in typo.stderr
    assert not (tmp_path / "sbatch_calls").exists() and not (tmp_path / "out").exists()


def test_relative_paths_are_taken_from_the_callers_folder(tmp_path):
    """run_train.sh cds into the repository; relative --output-dir / --data-dir (before or after --) still
    mean the folder it was typed in, and train.py, the SLURM scripts and `sweep state` get them absolute."""
    work = tmp_path / "work"
    ckpt.save({"epoch": 0}, work / "runs/cfg_2b/fold1/seed1001/checkpoint.pth")
    for args in (["--output-dir", "runs", "--data_dir", "data"], ["--", "--data-dir", "data", "--output_dir", "runs"],
                 ["--output-dir", "/nowhere", "--", "--output-dir=runs", "--data-dir=data"]):
        res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--configs", "cfg_2b", "--folds", "1", *args], cwd=work,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": "python"})
        assert runs(res) == [("cfg_2b", "1", "1002", None, f" --data_dir {work}/data --output_dir {work}/runs")], args
        assert "skip (finished): cfg_2b fold 1 seed 1001" in res.stderr
    res = subprocess.run(["bash", str(SCRIPT), "--slurm", "--dry-run", "--configs", "cfg_2b", "--folds", "1",
                          "--output-dir", "runs", "--", "--data_dir", "data"], cwd=work, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHON": "python"})
    assert res.returncode == 0, res.stderr
    assert f"# ---- {work}/runs/slurm/train_array.sbatch" in res.stdout
    assert f"-m sweep check --configs cfg_2b --folds 1 --output_dir {work}/runs ||" in res.stdout
    assert f"blend_weights.py --data-dir {work}/data --output-dir {work}/runs" in res.stdout
    # `sweep state` (scripts/slurm_ddp.sbatch passes it train.py's arguments as they are)
    res = subprocess.run([sys.executable, "-m", "sweep", "state", "cfg_2b", "1", "1001", "--epochs", "3",
                          "--output_dir", "runs"], cwd=work, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stdout.strip() == ckpt.FINISHED, res.stderr


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path):
    ckpt.save({"epoch": 0}, tmp_path / "cfg_1/fold0/seed1001/checkpoint.pth")  # a complete checkpoint
    (tmp_path / "cfg_5d/fold-1/seed2008").mkdir(parents=True)
    (tmp_path / "cfg_5d/fold-1/seed2008/last_state.pth").write_bytes(b"x")
    (tmp_path / "cfg_3/fold2/seed1002").mkdir(parents=True)
    (tmp_path / "cfg_3/fold2/seed1002/checkpoint.pth").write_bytes(b"")  # zero-length: not finished
    res = sh("--dry-run", "--output_dir", str(tmp_path))
    rs = runs(res)
    assert len(rs) == 143 and ("cfg_1", "0", "1001") not in {r[:3] for r in rs}
    assert ("cfg_3", "2", "1002", None) in {r[:4] for r in rs}
    assert "skip (finished): cfg_1 fold 0 seed 1001" in res.stderr and "cfg_3 fold 2" not in res.stderr
    assert [r[:4] for r in rs if r[3]] == [("cfg_5d", "-1", "2008", " --resume")]


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for `python train.py -C cfg --fold f --seed s ... --output_dir d`: records the call, marks the run
# done with a complete checkpoint; any other call (the sweep itself: -m sweep) goes to the real python
[ "$1" = train.py ] || exec "$REAL_PYTHON" "$@"
shift; cfg=$2; fold=$4; seed=$6; out=output
while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && out=$2; shift; done
echo "gpu=${CUDA_VISIBLE_DEVICES:-none} $cfg $fold $seed" >> "$CALLS"
sleep 0.3
if [ "$seed" = "${FAIL_SEED:-}" ]; then echo "Traceback: boom"; exit 3; fi
mkdir -p "$out/$cfg/fold$fold/seed$seed" && cp "$CKPT" "$out/$cfg/fold$fold/seed$seed/checkpoint.pth"
"""


def fake_env(tmp_path, **extra):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    ckpt.save({"epoch": 0}, tmp_path / "complete.pth")
    return {"PYTHON": str(fake), "REAL_PYTHON": sys.executable, "CALLS": str(tmp_path / "calls.txt"),
            "CKPT": str(tmp_path / "complete.pth"), **extra}


def test_gpu_slots_skip_on_rerun_and_failure_names_the_run(tmp_path):
    out = tmp_path / "out"
    env = fake_env(tmp_path)
    res = sh("--configs", "cfg_2a", "--gpus", "0,1", "--output_dir", str(out), env=env)
    assert res.returncode == 0 and "all runs finished" in res.stdout, res.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 16 and {c.split()[0] for c in calls} == {"gpu=0", "gpu=1"}
    assert len(list(out.glob("cfg_2a/fold*/seed*/checkpoint.pth"))) == 16
    assert len(list((out / "logs").glob("cfg_2a_fold*_seed*.log"))) == 16

    res = sh("--configs", "cfg_2a", "--output_dir", str(out), env=env)  # all finished: nothing runs
    assert res.returncode == 0 and "0 run(s) to do" in res.stdout
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 16

    env = fake_env(tmp_path, FAIL_SEED="1002")
    res = sh("--configs", "cfg_3", "--output_dir", str(out), env=env)  # sequential: stops at the first failure
    assert res.returncode == 1
    assert "FAILED: cfg_3 fold 0 seed 1002" in res.stderr and "boom" in res.stderr
    assert "cfg_3_fold0_seed1002.log" in res.stdout
    assert [c for c in (tmp_path / "calls.txt").read_text().splitlines()[16:]] == [
        "gpu=none cfg_3 0 1001", "gpu=none cfg_3 0 1002"]


def test_gpu_mode_stops_starting_runs_after_a_failure(tmp_path):
    env = fake_env(tmp_path, FAIL_SEED="1001")
    # shard 0/2 of cfg_4: fold 0..3 with seed 1001 then fold -1 seeds 2001, 2003, ...
    res = sh("--configs", "cfg_4", "--shard", "0/2", "--gpus", "0,1", "--output_dir", str(tmp_path / "out"), env=env)
    assert res.returncode == 1
    assert "FAILED: cfg_4 fold 0 seed 1001" in res.stderr and "FAILED: cfg_4 fold 1 seed 1001" in res.stderr
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 2  # nothing new after the failures


def test_zero_length_checkpoint_is_trained_again(tmp_path):
    out = tmp_path / "out"
    env = fake_env(tmp_path)
    (out / "cfg_2b/fold1/seed1002").mkdir(parents=True)
    (out / "cfg_2b/fold1/seed1002/checkpoint.pth").write_bytes(b"")  # e.g. a crash while the disk was full
    res = sh("--configs", "cfg_2b", "--folds", "1", "--output_dir", str(out), env=env)
    assert res.returncode == 0 and "2 run(s) to do" in res.stdout, res.stderr
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["gpu=none cfg_2b 1 1001", "gpu=none cfg_2b 1 1002"]
    assert ckpt.is_finished(out / "cfg_2b/fold1/seed1002")


def test_slurm_without_sbatch_says_so(tmp_path):
    res = subprocess.run(["/bin/bash", str(SCRIPT), "--slurm", "--output_dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PATH": str(tmp_path), "PYTHON": sys.executable})
    assert res.returncode == 2 and "--slurm needs SLURM's sbatch, which is not on PATH" in res.stderr
    assert not (tmp_path / "slurm").exists()


def test_overrides_file_reaches_each_runs_config_and_the_command_line_wins(tiny_data, tmp_path):
    """Two real train.py runs through run_train.sh with a per-config overrides file (relative to the caller's
    folder): each run's resolved config.json holds its own config's values; after `--` wins over the file."""
    work = tmp_path / "work"
    work.mkdir()
    small = {"frontend_filters": 8, "sq_dim": 16, "sq_heads": 2, "sq_layers": 1, "num_workers": 0,
             "neptune_mode": "off", "grad_accumulation": 1, "max_train_rows": 4, "epochs": 3, "eval_epochs": 1}
    (work / "sizes.json").write_text(json.dumps({"*": small, "cfg_2a": {"batch_size": 2, "lr": 0.002},
                                                 "cfg_2b": ["--batch_size", "4", "--epochs", "2"]}))
    args = ["--configs", "cfg_2a,cfg_2b", "--folds", "0", "--seeds", "3", "--overrides", "sizes.json", "--output-dir",
            "out", "--data-dir", str(tiny_data), "--", "--epochs", "1"]
    dry = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=work, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHON": "python"})
    lines = dry.stdout.strip().splitlines()
    assert dry.returncode == 0 and len(lines) == 2, dry.stderr
    assert lines[0].endswith(" --eval_epochs 1 --batch_size 2 --lr 0.002 --epochs 1 "
                             f"--data_dir {tiny_data} --output_dir {work}/out"), lines[0]
    assert lines[1].endswith(" --eval_epochs 1 --batch_size 4 --epochs 2 --epochs 1 "
                             f"--data_dir {tiny_data} --output_dir {work}/out"), lines[1]
    res = subprocess.run(["bash", str(SCRIPT), *args], cwd=work, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and "all runs finished" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    saved = {c: json.loads((ckpt.run_dir(work / "out", c, 0, 3) / "config.json").read_text())
             for c in ("cfg_2a", "cfg_2b")}
    assert (saved["cfg_2a"]["batch_size"], saved["cfg_2a"]["lr"], saved["cfg_2a"]["epochs"]) == (2, 0.002, 1)
    assert (saved["cfg_2b"]["batch_size"], saved["cfg_2b"]["epochs"]) == (4, 1)
    assert saved["cfg_2b"]["lr"] == load_config("cfg_2b").lr  # cfg_2a's entry is cfg_2a's only
    assert all(s["sq_dim"] == 16 and s["max_train_rows"] == 4 for s in saved.values())  # "*": both


def test_slurm_dry_run_shows_each_configs_overrides_and_a_bad_file_submits_nothing(tmp_path):
    over = tmp_path / "o.json"
    over.write_text('{"cfg_3": {"batch_size": 16}, "cfg_4": ["--num_workers", "2"]}')
    res = sh("--slurm", "--dry-run", "--configs", "cfg_3,cfg_4", "--folds", "1", "--overrides", str(over), "--",
             "--output_dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "OVERRIDES_cfg_3=(  # cfg_3\n  --batch_size 16\n)\nOVERRIDES_cfg_4=(  # cfg_4\n  --num_workers 2\n)" \
           in res.stdout
    assert '-- "${!OVERRIDES}" "${TRAIN_ARGS[@]}"' in res.stdout
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text(f"#!/bin/sh\necho called >> {tmp_path}/sbatch_calls\necho 1\n")
    sbatch.chmod(0o755)
    over.write_text('{"cfg_3": {"batch_size": 16}, "cfg_4": {"num_worker": 2}}')
    bad = sh("--slurm", "--configs", "cfg_3,cfg_4", "--overrides", str(over), "--", "--output_dir",
             str(tmp_path / "out"), env={"PATH": f"{sbatch.parent}:{os.environ['PATH']}"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stdout == "", bad.stderr
    assert f"error: {over}: cfg_4: unknown config field 'num_worker'" in bad.stderr and "num_workers?" in bad.stderr
    assert not (tmp_path / "sbatch_calls").exists() and not (tmp_path / "out").exists()

"""train.py's command line: every config field overridable with its type, clear errors otherwise."""
import subprocess
import sys
from pathlib import Path

import pytest

import train
from utils.config import ConfigError
from utils.io import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_respect_types():
    cfg, opts = train.parse_args(["-C", "cfg_3", "--fold", "-1", "--epochs", "1", "--lr", "3e-4",
                                  "--pretrained", "False", "--backbone", "mixnet_s", "--seed", "7",
                                  "--data_dir", "/some/path", "--max_train_rows=10", "--resume"])
    assert (cfg.fold, cfg.epochs, cfg.seed, cfg.max_train_rows) == (-1, 1, 7, 10)
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float)
    assert cfg.pretrained is False and cfg.backbone == "mixnet_s" and cfg.data_dir == "/some/path"
    assert cfg.name == "cfg_3" and opts["resume"] and not opts["force"]


def test_overrides_do_not_leak_between_loads():
    train.parse_args(["-C", "cfg_5a", "--drop_rate", "0.9"])
    assert train.parse_args(["--config", "cfg_5a"])[0].drop_rate != 0.9


@pytest.mark.parametrize("argv, words", [
    (["-C", "cfg_2a", "--no_such_field", "1"], ["no_such_field"]),
    (["-C", "cfg_2a", "--epochs", "many"], ["--epochs"]),
    (["-C", "cfg_2a", "--epochs", "0"], ["--epochs"]),
    (["-C", "cfg_2a", "--pretrained", "maybe"], ["--pretrained"]),
    (["-C", "cfg_2a", "--fold", "-2"], ["--fold"]),
    (["-C", "cfg_2a", "--lr"], ["--lr", "value"]),
    (["-C", "cfg_2a", "stray"], ["stray"]),
    (["-C", "cfg_nope"], ["cfg_nope"]),
    (["--epochs", "1"], ["-C"]),
    (["-C", "cfg_2a", "--optimizer", "SGD"], ["--optimizer"]),
])
def test_bad_command_lines_name_the_problem(argv, words):
    with pytest.raises(ConfigError) as err:
        train.parse_args(argv)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cli_prints_one_line_error_and_exits_2(capsys):
    assert run_cli(train.main, ["-C", "cfg_2a", "--no_such_field", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no_such_field" in err[0]


def test_script_entry_point(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "-C", "cfg_2a", "--lr", "fast"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "--lr" in res.stderr
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and "train.py -C" in res.stdout


def test_train_command_line_edges():
    assert train.parse_args(["-C", "cfg_1", "--", "--lr", "1e-3"])[0].lr == 1e-3  # a `--` before the overrides
    with pytest.raises(ConfigError, match="below 2\\*\\*32"):  # one SeedSequence word (utils/seed.py)
        train.parse_args(["-C", "cfg_1", "--seed", str(2**32)])
    assert train.parse_args(["-C", "cfg_1", "--seed", str(2**32 - 1)])[0].seed == 2**32 - 1

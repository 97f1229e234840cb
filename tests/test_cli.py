"""Every script takes both spellings of its long options, as train.py does (--data-dir and --data_dir)."""
import pytest

from scripts import blend_weights, demo, plot_sample, predict
from utils.cli import ArgumentParser


@pytest.mark.parametrize("module,argv,attr,value", [
    (blend_weights, ["--data_dir", "d", "--output_dir=o"], "output_dir", "o"),
    (predict, ["--data_dir", "d", "--num_workers", "3"], "num_workers", 3),
    (demo, ["--work_dir", "w", "--max_train_rows", "9"], "max_train_rows", 9),
    (plot_sample, ["--eeg_id", "5", "--data_dir", "d"], "data_dir", "d"),
])
def test_underscore_and_hyphen_spellings_are_one_option(module, argv, attr, value):
    assert getattr(module.parse_args(argv), attr) == value
    hyphen = [a.replace("_", "-") if a.startswith("--") else a for a in argv]
    assert vars(module.parse_args(argv)) == vars(module.parse_args(hyphen))


def test_unknown_options_and_values_are_left_alone():
    p = ArgumentParser()
    p.add_argument("--data-dir")
    p.add_argument("--tag")
    args, rest = p.parse_known_args(["--tag=a_b", "--data_dir", "d", "--other_thing", "x"])
    assert (args.tag, args.data_dir, rest) == ("a_b", "d", ["--other_thing", "x"])


def test_lists_take_commas_spaces_and_negative_numbers():
    from utils.cli import ArgumentParser
    from utils.config import ConfigError

    p = ArgumentParser()
    p.add_list("--folds", type=int)
    for argv, folds in ((["--folds", "-1,0"], [-1, 0]), (["--folds", "0,-1"], [0, -1]), (["--folds", "-1", "0"], [-1, 0]),
                        (["--folds=-1,0"], [-1, 0]), (["--folds", "0", "1,2"], [0, 1, 2])):
        assert p.parse_args(argv).folds == folds, argv
    for bad in (["--folds", ","], ["--folds"]):
        with pytest.raises(ConfigError, match="--folds needs a value"):
            p.parse_args(bad)

"""The one command-line parser of train.py, every script and the sweep.

- Every long option in both spellings: `--data-dir` and `--data_dir` (and `--output-dir`/`--output_dir`,
  ...) mean the same everywhere, so a command line moves between train.py, run_train.sh and the scripts
  without renaming its options.
- Lists either comma- or space-separated (`--configs cfg_1,cfg_3` = `--configs cfg_1 cfg_3`): `add_list`.
- No abbreviations (`--seed` is never taken for `--seeds`), and a bad command line is one line
  (`error: ...`, exit 2 through utils.io.run_cli), not a usage dump.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys

from utils.config import ConfigError


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # '-1', '-1,0' and '-0.5' are values (e.g. `--folds -1,0`), never options
        self._negative_number_matcher = re.compile(r"^-(\d[\d.,\s-]*|\.\d+)$")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args([self._hyphenated(a) for a in args], namespace)

    def _hyphenated(self, token: str) -> str:
        """--data_dir[=x] -> --data-dir[=x] when that is one of this parser's options."""
        if not token.startswith("--") or "_" not in token:
            return token
        name, eq, value = token.partition("=")
        alt = "--" + name[2:].replace("_", "-")
        return alt + eq + value if alt in self._option_string_actions else token

    def error(self, message: str):
        """One line naming the option, raised as ConfigError (run_cli prints it and exits 2)."""
        m = re.fullmatch(r"argument (\S+?)(/\S+)?: expected (one|at least one) argument", message)
        raise ConfigError(f"{m.group(1)} needs a value" if m else message)

    def add_list(self, *flags, type=str, **kwargs):
        """An option taking a list, comma- or space-separated or both (`--folds 0,1 2`)."""
        return self.add_argument(*flags, nargs="+", action=_ListAction, item_type=type, **kwargs)


class _ListAction(argparse.Action):
    def __init__(self, *args, item_type=str, **kwargs):
        self.item_type = item_type
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = split_list(values)
        if not items:
            raise ConfigError(f"{option_string} needs a value")
        try:
            setattr(namespace, self.dest, [self.item_type(v) for v in items])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"bad value for {option_string}: {' '.join(values)} ({err})") from None


def split_list(values) -> list[str]:
    """['cfg_1,cfg_3', 'cfg_4'] or 'cfg_1, cfg_3' -> ['cfg_1', 'cfg_3', ...]."""
    values = [values] if isinstance(values, str) else values
    return [t for v in values for t in re.split(r"[,\s]+", v.strip()) if t]


def shell_quote(arg: str) -> str:
    """shlex.quote, but double quotes where that reads better (a dict override such as {'n_mels': 16}),
    for the commands the project prints or writes for a user to run."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)

"""The scripts' argument parser: every long option in both spellings, as train.py takes config fields.

`--data-dir` and `--data_dir` (and `--output-dir`/`--output_dir`, ...) mean the same in every script, so
a command line moves between train.py, run_train.sh and the scripts without renaming its options.
"""
from __future__ import annotations

import argparse
import shlex
import sys


class ArgumentParser(argparse.ArgumentParser):
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


def shell_quote(arg: str) -> str:
    """shlex.quote, but double quotes where that reads better (a dict override such as {'n_mels': 16}),
    for the commands the project prints or writes for a user to run."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)

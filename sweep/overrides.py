"""Per-config train.py arguments for the sweep's runs: `./run_train.sh --overrides FILE`, and the demo's runs.

FILE is JSON (PyYAML is not among the project's requirements): one object whose keys are config names, or
"*" for every config, each holding train.py overrides of that config, as a mapping of config fields or as
train.py's own arguments:

    {"*": {"num_workers": 4},
     "cfg_2a": {"batch_size": 16, "epochs": 5},
     "cfg_5a": ["--batch_size", "8", "--spec_args", "{'n_mels': 64, ...}"]}

A run gets the "*" entry's arguments, then its config's, then the command line's after `--`; the later
one wins, so the command line has the last word. The file is checked as a whole when it is read, before
any run is trained or submitted: every key names a config, every entry applies to its config as train.py
will apply it (utils.config.apply_overrides). What the sweep itself chooses is refused (SWEEP_FIELDS): the
folders, the folds, the seeds, the config's name. Other values reach train.py as written, so file fields
such as train_df or cache_dir are relative to the data folder, as in the configs.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from utils.config import (ConfigError, apply_overrides, available_configs, load_config, override_pairs,
                          override_tokens)
from utils.io import atomic_write_text

ALL = "*"  # the entry for every config
# config fields the sweep sets for each run: a per-config value would train a run the sweep does not track
SWEEP_FIELDS = {"data_dir": "--data-dir", "output_dir": "--output-dir", "fold": "--folds", "seed": "--seeds",
                "name": "--configs"}


@dataclass(frozen=True)
class Overrides:
    file: str | None = None  # absolute; None: no overrides file
    entries: dict = field(default_factory=dict)  # "*" or a config -> its train.py arguments

    def args(self, config: str, after=()) -> list[str]:
        """The train.py overrides of a run of `config`: "*"'s, the config's, then `after` (later ones win)."""
        return [*self.entries.get(ALL, []), *self.entries.get(config, []), *after]


def read(path) -> dict:
    """The file's JSON object; a key given twice is an error (json would keep the last one silently)."""
    def unique(pairs):
        seen = [key for key, _ in pairs]
        twice = next((key for key in seen if seen.count(key) > 1), None)
        if twice is not None:
            raise ConfigError(f"{path}: '{twice}' is given twice")
        return dict(pairs)

    try:
        data = json.loads(Path(path).read_text(), object_pairs_hook=unique)
    except OSError as err:
        raise ConfigError(f"cannot read the overrides file {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a JSON object mapping a config (or "*") to its train.py overrides, '
                          f"got a {type(data).__name__}")
    return data


def check_key(path, key: str, known: list[str]) -> None:
    if key == ALL or key in known:
        return
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else f'the configs are {", ".join(known)}, or "*" for all'
    raise ConfigError(f"{path}: unknown config '{key}' ({hint})")


def entry_args(path, key: str, entry) -> list[str]:
    """An entry as train.py's arguments: a mapping {field: value} or a list of argument strings."""
    if isinstance(entry, dict):
        return override_tokens(entry)
    if isinstance(entry, list) and all(isinstance(t, str) for t in entry):
        return list(entry)
    raise ConfigError(f'{path}: {key}: expected a mapping {{"batch_size": 8, ...}} or a list of strings '
                      f'["--batch_size", "8", ...], got {json.dumps(entry)[:80]}')


def apply_entry(path, key: str, args: list[str], cfg) -> None:
    """Apply entry `key` to `cfg` as train.py will; a sweep field, an unknown field or a bad value is one line
    naming the file, the entry and the field."""
    where = f"{path}: {key}" if key == cfg.name else f'{path}: "{key}" (applied to {cfg.name})'
    try:
        for name, _ in override_pairs(args):
            if name in SWEEP_FIELDS:
                raise ConfigError(f"'{name}' is the sweep's to choose (give {SWEEP_FIELDS[name]} to "
                                  f"./run_train.sh), not an override")
        apply_overrides(cfg, args)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def load(path, configs=()) -> Overrides:
    """Read and check the file for a sweep over `configs`: every entry is applied to a fresh copy of its
    config after "*" (and "*" to each of `configs`), as train.py will apply them."""
    data = read(path)
    known = available_configs()
    entries = {}
    for key, entry in data.items():
        check_key(path, key, known)
        entries[key] = entry_args(path, key, entry)
    for config in dict.fromkeys([*configs, *(key for key in entries if key != ALL)]):
        cfg = load_config(config)
        for key in (ALL, config):
            if key in entries:
                apply_entry(path, key, entries[key], cfg)
    return Overrides(str(path), entries)


def write(path, entries: dict) -> None:
    """An overrides file (the demo's: each config's {field: value}), to read back with `load`."""
    atomic_write_text(path, json.dumps(entries, indent=2) + "\n")

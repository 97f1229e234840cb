"""Load a config module by name and apply command-line overrides with their types respected."""
from __future__ import annotations

import ast
import copy
import difflib
import importlib
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import configs


class ConfigError(ValueError):
    """A config name or override that cannot be used; the message says which and why."""


def available_configs() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__) if m.name.startswith("cfg_"))


def load_config(name: str) -> SimpleNamespace:
    """Return a deep copy of `configs.<name>.cfg` (so callers may mutate it freely)."""
    name = Path(name).stem if name.endswith(".py") else name
    if name not in available_configs():
        raise ConfigError(f"unknown config '{name}'; available: {', '.join(available_configs())}")
    return copy.deepcopy(importlib.import_module(f"configs.{name}").cfg)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "y", "on"):
        return True
    if low in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(f"expected a boolean (True/False), got '{text}'")


def parse_value(key: str, text: str, current):
    """Convert `text` to the type of the config's current value for `key`."""
    try:
        if text.strip().lower() in ("none", "null") and (current is None or not isinstance(current, (int, float, bool))):
            return None
        if isinstance(current, bool):
            return _parse_bool(text)
        if isinstance(current, int):
            value = float(text) if any(c in text for c in ".eE") and not text.lstrip("-").isdigit() else int(text)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(f"expected an integer, got '{text}'")
                value = int(value)
            return value
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (list, tuple, dict)):
            value = ast.literal_eval(text)
            if not isinstance(value, type(current)):
                raise ValueError(f"expected a {type(current).__name__}, got '{text}'")
            return value
        # current is None (an optional field): take a Python literal if it is one, else the string
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    except (ValueError, SyntaxError) as err:
        raise ConfigError(f"bad value for --{key}: {err}") from None


def override_pairs(tokens: list[str]) -> list[tuple[str, str]]:
    """`['--lr', '3e-4', '--batch-size=8']` -> `[('lr', '3e-4'), ('batch_size', '8')]` (the field names
    as train.py reads them; both spellings)."""
    items = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"expected --field value, got '{token}'")
        if "=" in token:
            key, text = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"--{token[2:]} needs a value")
            key, text = token[2:], tokens[i + 1]
            i += 2
        items.append((key.replace("-", "_"), text))
    return items


def override_tokens(fields: dict) -> list[str]:
    """`{'lr': 3e-4, 'spec_args': {...}}` -> `['--lr', '0.0003', '--spec_args', "{...}"]`: values as
    train.py's command line takes them back (`parse_value`: lists and dicts as Python literals)."""
    return [tok for key, value in fields.items()
            for tok in (f"--{key}", repr(value) if isinstance(value, (dict, list, tuple)) else str(value))]


def apply_overrides(cfg: SimpleNamespace, pairs: list[str]) -> SimpleNamespace:
    """Apply `['--lr', '3e-4', '--pretrained', 'False', ...]` (or `--lr=3e-4`) to cfg in place."""
    for key, text in override_pairs(pairs):
        if not hasattr(cfg, key):
            near = difflib.get_close_matches(key, vars(cfg), n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"unknown config field '{key}' (not defined in {cfg.name}{hint})")
        setattr(cfg, key, parse_value(key, text, getattr(cfg, key)))
    return cfg


def cfg_to_dict(cfg: SimpleNamespace) -> dict:
    """Plain-dict copy of a config (the run folder's resolved config.json)."""
    return dict(vars(cfg))


def cfg_from_dict(saved: dict) -> SimpleNamespace:
    """The inverse of cfg_to_dict: the saved values over the defaults of the config module they name
    (so a field added to the configs after the run was saved still has a value)."""
    name = saved.get("name")
    cfg = load_config(name) if name in available_configs() else SimpleNamespace()
    for key, value in saved.items():
        setattr(cfg, key, value)
    return cfg

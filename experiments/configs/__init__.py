"""Experiment config modules: ``<suite>/<name>.py`` each define ``get_config(arg)``."""

import difflib
import importlib.util
import os

__all__ = ["load", "load_module", "missing_key"]


def load_module(path: str, who: str = "config"):
    """The config module at ``path`` (a file, imported under a private name)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{who}: no config module at {path!r}")
    module_spec = importlib.util.spec_from_file_location("_experiment_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load(spec: str):
    """The config of ``path.py[:arg]`` (``get_config(arg)``; without ``:arg``, ``get_config()``),
    as ``python -m experiments.run --config=`` reads it."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    return module.get_config(arg or None) if arg else module.get_config()


def missing_key(config, key: str) -> tuple[list[str], str, list[str], str | None] | None:
    """Where the dotted ``key`` leaves ``config``: ``(the parts found, the part not found, the keys
    at that level, the closest of them or None)``; None when ``key`` names a key of ``config``."""
    node, path = config, []
    for part in key.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1)
            return path, part, keys, close[0] if close else None
        node, path = node[part], path + [part]
    return None

"""Extending the project from outside the package (docs/extending.md): a module of your own registers a preset
(:class:`Preset`, :func:`register_preset`) and/or a network builder (:func:`register_network`) when imported, and
``extensions=[your.module]`` on any entry point's command line imports it before anything is built. Only module
names are accepted, never paths, and nothing is imported because a checkpoint names it: a checkpoint of a
registered network loads with the same ``extensions=`` its training run had."""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Any

from alexnet_gtsrb.allowlist import register_network
from alexnet_gtsrb.data.transforms import Preset, register_preset
from alexnet_gtsrb.errors import ConfigError

__all__ = ["Preset", "load_extensions", "register_network", "register_preset"]

_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


def load_extensions(names: Any) -> None:
    """Import each module named in ``extensions`` (a list of dotted module names); a value that is not such a
    list, or a module that cannot be found, is a ConfigError naming it."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ConfigError(f"extensions={names!r} must be a list of module names, e.g. extensions=[my_lab.presets].")
    for name in names:
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise ConfigError(f"extensions: {name!r} is not a module name (dotted Python identifiers, no paths).")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # the extension itself imports something missing: its own traceback says what
            raise ConfigError(
                f"extensions: no module named {name!r}; put its folder on PYTHONPATH (or install it)."
            ) from None

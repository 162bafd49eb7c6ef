"""Optional extras (``pyproject.toml``): one clear line when a feature needs a missing one, where a missing Hydra
plugin would fail deep inside Hydra's config composition, naming neither the plugin nor the fix."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alexnet_gtsrb.errors import UserError

_SLURM = [("hydra_plugins.hydra_submitit_launcher", "slurm"), ("submitit", "slurm")]

#: Config choices given on the command line that need an extra: (group, option) -> [(import name, extra)].
CHOICE_EXTRAS: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("hparams_search", "optuna"): [("optuna", "hpo")],
    ("hydra/sweeper", "optuna_study"): [("optuna", "hpo")],
    ("cluster", "slurm"): _SLURM,
    ("hydra/launcher", "submitit_slurm"): _SLURM,
    ("hydra/launcher", "submitit_local"): _SLURM,
    ("logger", "mlflow"): [("mlflow", "mlflow")],
}


def require_extra(import_name: str, extra: str, feature: str) -> None:
    """Import ``import_name``; if that fails, raise a one-line UserError naming ``feature`` (as the user wrote it:
    ``format=onnx``) and the ``extra``. A module that fails on one of its own imports counts as missing too (a broken
    install of the extra); the message then names the module that is really missing."""
    try:
        importlib.import_module(import_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        detail = f" ({exc})" if missing and missing != import_name and not import_name.startswith(f"{missing}.") else ""
        fix = f"pip install 'alexnet_gtsrb[{extra}]'{detail}"
        raise UserError(f"{feature} needs the optional '{extra}' extra: {fix}") from None


def require_extras_for_overrides(overrides: Sequence[str]) -> None:
    """Check the extras behind the config choices among Hydra command-line ``overrides`` (``sys.argv[1:]``), before
    Hydra composes anything: ``group=option``, ``+group=option``, ``++group=option`` and sweeps over options
    (``cluster=slurm,local``); choices made inside config files are not seen."""
    for arg in overrides:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.lstrip("+").split("=", 1)
        for option in (v.strip() for v in value.split(",")):
            for import_name, extra in CHOICE_EXTRAS.get((key, option), []):
                require_extra(import_name, extra, f"{key}={option}")

"""Optional extras (``pip install 'alexnet_gtsrb[hpo]'`` etc.): one clear line when a feature needs a missing one.

The extras are declared in ``pyproject.toml`` (``[project.optional-dependencies]``): ``hpo`` (the Optuna sweeper),
``slurm`` (the submitit launcher), ``export`` (onnx, onnxruntime), ``mlflow``. Without this check, a missing
Hydra plugin fails deep inside Hydra's config composition with a message that names neither the plugin nor the
fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alexnet_gtsrb.errors import UserError

DISTRIBUTION = "alexnet_gtsrb"

#: Config choices given on the command line that need an extra: (group, option) -> [(import name, extra)].
CHOICE_EXTRAS: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("hparams_search", "optuna"): [("optuna", "hpo")],
    ("hydra/sweeper", "optuna_study"): [("optuna", "hpo")],
    ("cluster", "slurm"): [("hydra_plugins.hydra_submitit_launcher", "slurm"), ("submitit", "slurm")],
    ("hydra/launcher", "submitit_slurm"): [("hydra_plugins.hydra_submitit_launcher", "slurm"), ("submitit", "slurm")],
    ("logger", "mlflow"): [("mlflow", "mlflow")],
    ("hydra/launcher", "submitit_local"): [("hydra_plugins.hydra_submitit_launcher", "slurm"), ("submitit", "slurm")],
}


class MissingExtraError(UserError):
    """A feature was asked for whose optional dependencies are not installed."""


def require_extra(import_name: str, extra: str, feature: str) -> None:
    """Import ``import_name``; if that fails, raise a one-line UserError naming ``feature`` and the ``extra``.

    ``feature`` is what the user asked for, as they wrote it (``format=onnx``, ``hparams_search=optuna``).
    A module that is there but fails on one of its own imports counts as missing too (a broken install of the
    extra); the message then names the module that is really missing.
    """
    try:
        importlib.import_module(import_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        detail = f" ({exc})" if missing and missing != import_name and not import_name.startswith(f"{missing}.") else ""
        raise MissingExtraError(
            f"{feature} needs the optional '{extra}' extra: pip install '{DISTRIBUTION}[{extra}]'{detail}"
        ) from None


def require_extras_for_overrides(overrides: Sequence[str]) -> None:
    """Check the extras behind the config choices among Hydra command-line ``overrides`` (``sys.argv[1:]``).

    Runs before Hydra composes anything, so ``hparams_search=optuna`` without the ``hpo`` extra says so instead of
    failing inside Hydra. Recognises ``group=option``, ``+group=option``, ``++group=option`` and sweeps over
    options (``cluster=slurm,local``); choices made inside config files are not seen.
    """
    for arg in overrides:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        for option in (v.strip() for v in value.split(",")):
            for import_name, extra in CHOICE_EXTRAS.get((key, option), []):
                require_extra(import_name, extra, f"{key}={option}")

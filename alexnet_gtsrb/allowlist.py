"""What a config read from a checkpoint may build: an allowlist of ``_target_``s, checked before anything is built.

A checkpoint's ``hyper_parameters`` hold the network, optimizer and scheduler as Hydra configs, which
``torch.load(weights_only=True)`` accepts as plain data; but Hydra instantiates any ``_target_``, so a crafted
checkpoint could name ``torch.load`` (with a pickle inside) or any other callable and run code in ``evaluate``,
``predict``, ``export``, ``report`` or a resumed run. Hence, by design rather than by a deny list, ``net``,
``optimizer`` and ``scheduler`` may each name one target of their own kind: one of :data:`NETWORKS` (the project's
and those :func:`register_network` adds); a ``torch.optim`` optimizer; a ``torch.optim.lr_scheduler`` scheduler or
one of :data:`SCHEDULES` (or no scheduler). Nothing else anywhere: no nested ``_target_``, none in any other saved
setting, and no interpolation (``${...}``): a saved config is resolved before it is written, and a resolver such
as ``oc.decode`` could build a new ``_target_`` after the check. The network config may not be ``_partial_``
(Hydra would hand back a factory where a module belongs). Nesting deeper than :data:`MAX_DEPTH` levels (Python's
recursion, and a self-referencing pickle) is refused before any walk.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import torch

from alexnet_gtsrb.errors import UserError

#: The networks a checkpoint may build, by ``_target_``: the project's, and those :func:`register_network` adds.
NETWORKS = {"alexnet_gtsrb.models.alexnet.AlexNet", "alexnet_gtsrb.models.towers.AlexNetTowers"}
#: The project's schedule factories a checkpoint may build.
SCHEDULES = frozenset({"alexnet_gtsrb.schedules.warmup_cosine"})
#: How deep a checkpoint's containers may nest (this project's nest under 10 levels; far below recursion limits).
MAX_DEPTH = 64
#: How many values a walk visits at most: a pickle can share one container many times over, so a few bytes can
#: describe 2**60 values (this project's checkpoints hold a few thousand).
MAX_VALUES = 1_000_000
T = TypeVar("T")


class UnsafeCheckpointError(UserError):
    """A checkpoint names something it may not build; nothing was built."""


def register_network(builder: T) -> T:
    """Allow ``builder`` (an ``nn.Module`` class or a function returning one) as ``model.net._target_``, in
    configs and in checkpoints; usable as a decorator (docs/extending.md). Its ``_target_`` is its module and
    qualified name, so registering needs the module imported: ``extensions=[that.module]``."""
    qualname = getattr(builder, "__qualname__", "<none>")
    if not callable(builder) or "<" in qualname:
        raise UserError(f"register_network({builder!r}): a network builder is a module-level class or function.")
    NETWORKS.add(f"{builder.__module__}.{qualname}")
    return builder


def _class_in(target: str, module: Any, bases: Any) -> bool:
    """True when ``target`` is ``<module>.<Name>`` for a class directly in ``module`` that subclasses ``bases``."""
    name = target.removeprefix(f"{module.__name__}.")
    obj = getattr(module, name, None) if name != target and "." not in name else None
    return inspect.isclass(obj) and issubclass(obj, bases)


_SCHEDULER_BASES = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
#: role -> (may ``_target_`` be built in it, what the role may name, as the refusal says).
_ROLES = {
    "net": (lambda t: t in NETWORKS, "the project's networks and those registered with register_network"),
    "optimizer": (lambda t: _class_in(t, torch.optim, torch.optim.Optimizer), "torch.optim optimizers"),
    "scheduler": (
        lambda t: t in SCHEDULES or _class_in(t, torch.optim.lr_scheduler, _SCHEDULER_BASES),
        "torch.optim.lr_scheduler schedulers and the project's schedules",
    ),
}


def allowed_target(target: str, role: str | None = None) -> bool:
    """True when ``target`` may be built in ``role`` (``net``/``optimizer``/``scheduler``; None: in any role)."""
    return any(_ROLES[r][0](str(target)) for r in ([role] if role else _ROLES))


def walk(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for ``value`` and everything nested in it, depth first, without recursion; nesting deeper
    than :data:`MAX_DEPTH` (a container holding itself) and over :data:`MAX_VALUES` values are refused, naming it."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    for _ in range(MAX_VALUES):
        if not stack:
            return
        path, item, depth = stack.pop()
        yield path, item
        if not isinstance(item, Mapping | list | tuple):
            continue
        if depth >= MAX_DEPTH:
            shown = (f"{path[:80]}..." if len(path) > 80 else path) or "the top level"
            raise _refuse(where, f"{shown} nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, Mapping):
            children = [(f"{path}.{k}" if path else str(k), v) for k, v in item.items()]
        else:
            children = [(f"{path}[{i}]", v) for i, v in enumerate(item)]
        stack.extend((p, v, depth + 1) for p, v in reversed(children))
    if stack:
        raise _refuse(where, f"more than {MAX_VALUES} values")


def _refuse(where: str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{where}: refused: {what}; nothing was loaded or run. Only load checkpoints from sources you trust."
    )


def check_config(config: Any, where: str, roles: bool = False) -> None:
    """Refuse any ``_target_`` in ``config`` (except, with ``roles``, the one at the top of its ``net``,
    ``optimizer`` or ``scheduler`` if it is of that role's kind) and any interpolation, naming the key and value."""
    for path, value in walk(config, where):
        if isinstance(value, Mapping) and "_target_" in value:
            target = str(value["_target_"])
            role = path if roles and path in _ROLES else None
            if role is None or not allowed_target(target, role):
                allowed = f" (a {role} config may name: {_ROLES[role][1]})" if role else ""
                raise _refuse(where, f"{path + '.' if path else ''}_target_={target!r} may not be built{allowed}")
        elif isinstance(value, str) and "${" in value:
            raise _refuse(where, f"{path} holds an interpolation ({value[:60]!r}); saved configs are plain values")


def check_model_configs(hyper_parameters: Mapping[str, Any], where: str) -> None:
    """The whole check for a model's hyper-parameters: ``net``/``optimizer``/``scheduler`` each a config of its
    own kind (the scheduler may be empty), every other setting plain data."""
    for name, value in hyper_parameters.items():
        if name in _ROLES and (name != "scheduler" or value):
            if not isinstance(value, Mapping) or "_target_" not in value:
                raise _refuse(where, f"{name} must be a config with a _target_, got {type(value).__name__}")
            if name == "net" and value.get("_partial_") not in (None, False):
                raise _refuse(where, f"net._partial_={value['_partial_']!r}: the network config must build the network")
    check_config(hyper_parameters, where, roles=True)

"""The bench's options (the ``bench:`` block of ``conf/bench.yaml``), the result ``Row`` and the table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from alexnet_gtsrb.errors import ConfigError

__all__ = ["OPTIONS", "SECTIONS", "Row", "bench_options", "bf16", "device", "format_table", "ratio"]

SECTIONS = ("ceiling", "e2e", "pipeline", "lrn", "memory", "precision", "ema", "profile")  # the order they run in
#: The least value of each integer option; the ``*_batch``/``*_records`` ones may also be null.
MINIMUM = dict(steps=1, warmup=0, e2e_warmup=1, items=1, lrn_batch=1, memory_records=1, precision_batch=1)
#: The keys of the ``bench:`` block; their defaults are in conf/bench.yaml.
OPTIONS = ("sections", *MINIMUM, "out")


@dataclass
class Row:
    """One measurement. ``ratio`` is value / the value of row ``reference``; ``target`` like ">= 0.90"."""

    section: str
    what: str
    value: float | None
    unit: str
    ratio: float | None = None
    reference: str | None = None
    target: str | None = None
    note: str | None = None
    met: bool | None = None

    def check(self) -> None:
        """Set ``met`` from ``ratio`` and ``target`` (None when either is missing)."""
        self.met = None
        if self.ratio is not None and self.target:
            op, bound = self.target.split()
            self.met = self.ratio >= float(bound.rstrip("x")) if op == ">=" else self.ratio <= float(bound.rstrip("x"))


def ratio(value: float | None, ref: float | None) -> float | None:
    """value / ref, or None when either is missing or ref is 0."""
    return None if value is None or not ref else value / ref


def bench_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``bench:`` block of the composed config (Hydra already refuses keys it lacks); a bad value is one
    line naming its key. ``sections`` comes back in the order they run."""
    block = cfg.get("bench")
    opts: dict[str, Any] = OmegaConf.to_container(block, resolve=True) if block else {}  # type: ignore[assignment]
    if unknown := sorted(set(opts) - set(OPTIONS)):
        raise ConfigError(f"unknown bench option(s) {unknown}; allowed: {', '.join(OPTIONS)}.")
    for key, low in MINIMUM.items():
        value = opts.get(key)
        nullable = key.endswith(("_batch", "_records"))
        if not (value is None and nullable) and (type(value) is not int or value < low):
            raise ConfigError(f"bench.{key}={value}: must be an integer >= {low}{' or null' if nullable else ''}.")
    sections = opts.get("sections") or []
    sections = [sections] if isinstance(sections, str) else list(sections)
    if not sections or set(sections) - set(SECTIONS):
        raise ConfigError(f"bench.sections={sections}: choose from {', '.join(SECTIONS)}.")
    opts["sections"] = [s for s in SECTIONS if s in sections]
    return opts


def device(cfg: DictConfig) -> torch.device:
    """The device Lightning would pick for ``trainer.accelerator`` (single device)."""
    acc = str(cfg.trainer.get("accelerator", "auto"))
    cuda = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    return torch.device("cuda", 0) if cuda else torch.device("cpu")


def bf16(cfg: DictConfig) -> bool:
    """Whether ``trainer.precision`` is a bf16 one."""
    return str(cfg.trainer.get("precision", "32-true")).startswith("bf16")


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: section, what, value, unit, ratio, vs (its reference), target (ok/MISSED), note."""
    head = ("section", "what", "value", "unit", "ratio", "vs", "target", "note")
    body = [
        (
            r.section,
            r.what,
            _fmt(r.value) if r.value is not None else "",
            r.unit if r.value is not None else "",
            f"{r.ratio:.2f}" if r.ratio is not None else "",
            r.reference or "",
            f"{r.target} {'ok' if r.met else 'MISSED' if r.met is False else ''}".rstrip() if r.target else "",
            r.note or "",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    cell = lambda i, c: c.rjust(widths[i]) if i in (2, 4) else c.ljust(widths[i])  # numbers right-aligned
    line = lambda cells: "  ".join(cell(i, c) for i, c in enumerate(cells)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])

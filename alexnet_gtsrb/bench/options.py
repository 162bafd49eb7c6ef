"""The bench's options (the ``bench:`` block of ``conf/bench.yaml``), the result ``Row``, the table, the header."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from alexnet_gtsrb.bench.proc import usable_cores
from alexnet_gtsrb.errors import ConfigError

__all__ = [
    "DATA_SECTIONS",
    "OPTIONS",
    "SECTIONS",
    "Row",
    "bench_options",
    "config_summary",
    "device",
    "format_table",
    "header_lines",
    "machine_info",
    "precision",
    "ratio",
]

SECTIONS = ("ceiling", "e2e", "pipeline", "lrn", "memory", "precision", "ema", "profile")  # the order they run in
DATA_SECTIONS = ("e2e", "pipeline", "memory", "profile")  # skipped when data.data_dir holds no GTSRB tree
#: The keys of the ``bench:`` block; their defaults are in conf/bench.yaml.
OPTIONS = (
    "sections",
    "steps",
    "warmup",
    "e2e_warmup",
    "items",
    "lrn_batch",
    "memory_records",
    "precision_batch",
    "out",
)


# ------------------------------------------------------------------------------------------------ results
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
    met: bool | None = field(default=None)

    def check(self) -> None:
        """Set ``met`` from ``ratio`` and ``target`` (None when either is missing)."""
        if self.ratio is None or not self.target:
            self.met = None
            return
        op, threshold = self.target.split()
        bound = float(threshold.rstrip("x"))
        self.met = self.ratio >= bound if op == ">=" else self.ratio <= bound


def ratio(value: float | None, ref: float | None) -> float | None:
    """value / ref, or None when either is missing or ref is 0."""
    if value is None or ref is None or ref == 0:
        return None
    return value / ref


# ------------------------------------------------------------------------------------------------ options
def bench_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``bench`` block of the composed config (``conf/bench.yaml`` holds the defaults), validated."""
    block: Any = cfg.get("bench") or {}
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    given: dict[str, Any] = dict(block)
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown bench option(s) {unknown}; allowed: {', '.join(OPTIONS)}.")
    missing = [k for k in OPTIONS if k not in given]
    if missing:
        raise ConfigError(f"bench option(s) {missing} missing: compose conf/bench.yaml, which has the defaults.")
    opts = dict(given)
    sections = opts["sections"]
    if isinstance(sections, str):
        sections = [s.strip() for s in sections.strip("[]").split(",") if s.strip()]
    if isinstance(sections, ListConfig):
        sections = list(sections)
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        raise ConfigError(f"bench.sections={sections}: choose from {', '.join(SECTIONS)}.")
    opts["sections"] = [s for s in SECTIONS if s in sections]
    for key, low in (("steps", 1), ("warmup", 0), ("e2e_warmup", 1), ("items", 1)):
        if int(opts[key]) < low:
            raise ConfigError(f"bench.{key}={opts[key]} must be >= {low}.")
        opts[key] = int(opts[key])
    for key in ("lrn_batch", "memory_records", "precision_batch"):
        if opts[key] is not None and int(opts[key]) < 1:
            raise ConfigError(f"bench.{key}={opts[key]} must be >= 1 (or null).")
    return opts


def device(cfg: DictConfig) -> torch.device:
    """The device Lightning would pick for ``trainer.accelerator`` (single device)."""
    acc = str(cfg.trainer.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def precision(cfg: DictConfig) -> tuple[str, bool]:
    """``trainer.precision`` and whether it is a bf16 one."""
    value = str(cfg.trainer.get("precision", "32-true"))
    return value, value.startswith("bf16")


def config_summary(cfg: DictConfig, opts: dict[str, Any]) -> dict[str, Any]:
    """The settings every number depends on (printed, and saved with the rows)."""
    net = cfg.model.net
    return {
        "model": f"{net.variant} groups={net.groups} lrn={net.lrn}/{net.lrn_impl} batch_norm={net.batch_norm}",
        "precision": precision(cfg)[0],
        "channels_last": bool(cfg.model.channels_last),
        "batch_size": int(cfg.data.batch_size),
        "image_size": int(cfg.data.image_size),
        "num_workers": int(cfg.data.num_workers),
        "augment": cfg.data.augment.get("preset", "none"),
        "data_dir": str(cfg.data.data_dir),
        "device": str(device(cfg)),
        "bench": {k: v for k, v in opts.items() if k != "out"},
    }


# ------------------------------------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, library versions and the date: the context every number here depends on."""
    import lightning
    import torchvision

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def header_lines(machine: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The three lines above the table: machine, config, bench options."""
    return [
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable, torch threads "
        f"{machine['torch_threads']}), load {machine['load_avg']}, torch {machine['torch']}, torchvision "
        f"{machine['torchvision']}, lightning {machine['lightning']}, python {machine['python']}, {machine['date']}",
        "config:  " + ", ".join(f"{k}={v}" for k, v in config.items() if k != "bench"),
        "bench:   " + ", ".join(f"{k}={v}" for k, v in config["bench"].items()),
    ]


# ------------------------------------------------------------------------------------------------ table
def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: section, what, value, unit, ratio (vs reference), target, note."""
    head = ("section", "what", "value", "unit", "ratio", "vs", "target", "note")
    body = []
    for r in rows:
        target = ""
        if r.target:
            target = f"{r.target} {'ok' if r.met else 'MISSED' if r.met is False else ''}".rstrip()
        body.append(
            (
                r.section,
                r.what,
                _fmt(r.value) if r.value is not None else "",
                r.unit if r.value is not None else "",
                f"{r.ratio:.2f}" if r.ratio is not None else "",
                r.reference or "",
                target,
                r.note or "",
            )
        )
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(len(head))]
    right = {2, 4}
    line = lambda cells: "  ".join(
        str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])

"""The driver: the ``bench:`` options (of ``conf/bench.yaml``), the header, the chosen sections in order, the
table, the JSON."""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from alexnet_gtsrb.bench.sections_data import DATA
from alexnet_gtsrb.bench.throughput import COMPUTE, Row, device, ratio, usable_cores
from alexnet_gtsrb.errors import ConfigError, DataNotFoundError

SECTIONS = ("ceiling", "e2e", "pipeline", "lrn", "memory", "precision", "ema", "profile")  # the order they run in
#: The least value of each integer option; the ``*_batch``/``*_records`` ones may also be null.
MINIMUM = dict(steps=1, warmup=0, e2e_warmup=1, items=1, lrn_batch=1, memory_records=1, precision_batch=1)
#: The keys of the ``bench:`` block; their defaults are in conf/bench.yaml.
OPTIONS = ("sections", *MINIMUM, "out")


def bench_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``bench:`` block of the composed config (Hydra already refuses keys it lacks, ``+bench.x`` aside); a
    bad value is one line naming its key. ``sections`` comes back in the order they run."""
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


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: section, what, value, unit, ratio, vs (its reference), target (ok/MISSED), note."""
    body = [("section", "what", "value", "unit", "ratio", "vs", "target", "note")]
    for r in rows:
        value, unit = ("", "") if r.value is None else (_fmt(r.value), r.unit)
        target = f"{r.target} {'ok' if r.met else 'MISSED' if r.met is False else ''}".rstrip() if r.target else ""
        ratio_ = "" if r.ratio is None else f"{r.ratio:.2f}"
        body.append((r.section, r.what, value, unit, ratio_, r.reference or "", target, r.note or ""))
    widths = [max(len(x[i]) for x in body) for i in range(len(body[0]))]
    cell = lambda i, c: c.rjust(widths[i]) if i in (2, 4) else c.ljust(widths[i])  # numbers right-aligned
    line = lambda cells: "  ".join(cell(i, c) for i, c in enumerate(cells)).rstrip()
    return "\n".join([line(body[0]), line(["-" * w for w in widths]), *map(line, body[1:])])


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, library versions and the date: the context every number here depends on."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        **{module.__name__: module.__version__ for module in (torch, torchvision, lightning)},
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def config_summary(cfg: DictConfig, opts: dict[str, Any]) -> dict[str, Any]:
    """The settings every number depends on (printed, and saved with the rows)."""
    net, data = cfg.model.net, cfg.data
    return {
        "model": f"{net.variant} groups={net.groups} lrn={net.lrn}/{net.lrn_impl} batch_norm={net.batch_norm}",
        "precision": str(cfg.trainer.get("precision", "32-true")),
        "channels_last": bool(cfg.model.channels_last),
        **{k: int(data[k]) for k in ("batch_size", "image_size", "num_workers")},
        "augment": data.augment.get("preset", "none"),
        "data_dir": str(data.data_dir),
        "device": str(device(cfg)),
        "bench": {k: v for k, v in opts.items() if k != "out"},
    }


def run_bench(cfg: DictConfig, opts: dict[str, Any], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected sections on a composed config; returns {"machine", "config", "rows"} (rows as dicts)."""
    torch.manual_seed(int(cfg.get("seed") or 0))
    np.random.seed(int(cfg.get("seed") or 0) % 2**32)
    machine, config = machine_info(), config_summary(cfg, opts)
    echo("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v is not None))
    echo("config:  " + ", ".join(f"{k}={v}" for k, v in config.items() if k != "bench"))
    echo("bench:   " + ", ".join(f"{k}={v}" for k, v in config["bench"].items()))
    dm, rows = None, []
    if set(DATA) & set(opts["sections"]):
        with contextlib.suppress(DataNotFoundError):  # no data: the data sections say so in their rows
            data = instantiate(cfg.data)
            data.prepare_data()
            data.setup("fit")
            dm = data
    for name in opts["sections"]:
        t = time.perf_counter()
        if name in COMPUTE:
            rows += COMPUTE[name](cfg, opts)
        elif dm is None:
            rows.append(Row(name, f"skipped (no data at {cfg.data.data_dir})", None, ""))
        else:
            rows += DATA[name](cfg, opts, dm)
        gc.collect()
        echo(f"  {name}: done in {time.perf_counter() - t:.1f} s")
    ceiling = next((r.value for r in rows if r.section == "ceiling"), None)  # its first row: the bare steps
    for r in rows:
        if r.reference == "ceiling":
            r.ratio = ratio(r.value, ceiling)
            if r.ratio is None and r.value is not None:
                r.note = f"{r.note}; run the ceiling section for the ratio"
        if r.ratio is not None and r.target:  # target: ">= 0.90", "<= 1.05", ">= 2x"
            op, bound = r.target.split()
            r.met = r.ratio >= float(bound.rstrip("x")) if op == ">=" else r.ratio <= float(bound.rstrip("x"))
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    echo(f"\n{format_table(rows)}\nload average at the end: {machine['load_avg_end']}")
    return {"machine": machine, "config": config, "rows": [asdict(r) for r in rows]}


def run_command(cfg: DictConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``python -m alexnet_gtsrb.bench`` does with its composed config (``conf/bench.yaml``): checks the
    ``bench`` options, runs in a temporary output folder unless ``paths.output_dir`` is set, and writes the
    result as JSON to ``bench.out`` when given; returns the result."""
    opts = bench_options(cfg)
    with tempfile.TemporaryDirectory(prefix="alexnet_gtsrb_bench-") as tmp:
        if cfg.paths.get("output_dir") is None:
            with open_dict(cfg):
                cfg.paths.output_dir = tmp
        result = run_bench(cfg, opts, echo)
    if opts["out"]:
        out = Path(str(opts["out"])).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        echo(f"wrote {out}")
    return result

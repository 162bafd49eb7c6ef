"""The driver: the header, the chosen sections in order, the table, the JSON."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
import torchvision
from omegaconf import DictConfig, open_dict

from alexnet_gtsrb.bench.options import Row, bench_options, device, format_table, ratio
from alexnet_gtsrb.bench.sections_compute import bench_ceiling, bench_ema, bench_lrn, bench_precision
from alexnet_gtsrb.bench.sections_data import bench_e2e, bench_memory, bench_pipeline, bench_profile, datamodule
from alexnet_gtsrb.bench.throughput import usable_cores
from alexnet_gtsrb.errors import DataNotFoundError

__all__ = ["run_bench", "run_command"]

COMPUTE = {"ceiling": bench_ceiling, "lrn": bench_lrn, "precision": bench_precision, "ema": bench_ema}
#: the sections that read data.data_dir: "skipped (no data at ...)" when it holds no GTSRB tree
DATA = {"e2e": bench_e2e, "pipeline": bench_pipeline, "memory": bench_memory, "profile": bench_profile}


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


def _e2e_ratio(rows: list[Row]) -> None:
    """e2e / ceiling (its first row: the bare steps), across sections; then every row's target."""
    ceiling = next((r.value for r in rows if r.section == "ceiling"), None)
    for r in rows:
        if r.reference == "ceiling":
            r.ratio = ratio(r.value, ceiling)
            if r.ratio is None and r.value is not None:
                r.note = f"{r.note}; run the ceiling section for the ratio"
        r.check()


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
        try:
            dm = datamodule(cfg)
        except DataNotFoundError:
            dm = None
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
    _e2e_ratio(rows)
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

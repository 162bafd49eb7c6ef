"""The driver: run the chosen sections on a composed config, print the header and the table, write the JSON."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from alexnet_gtsrb.bench.options import (
    DATA_SECTIONS,
    Row,
    bench_options,
    config_summary,
    format_table,
    header_lines,
    machine_info,
    ratio,
)
from alexnet_gtsrb.bench.sections_compute import bench_ceiling, bench_ema, bench_lrn, bench_precision
from alexnet_gtsrb.bench.sections_data import bench_e2e, bench_memory, bench_pipeline, datamodule, peak_rss_rows
from alexnet_gtsrb.bench.sections_profile import bench_profile
from alexnet_gtsrb.errors import DataNotFoundError

__all__ = ["run_bench", "run_command"]


def _cross_section_ratios(rows: list[Row]) -> None:
    """e2e / ceiling and project / torchvision pipeline ratios (rows of different sections), then targets."""
    ceiling = next((r.value for r in rows if r.section == "ceiling"), None)  # the bare steps (first row)
    for r in rows:
        if r.section == "e2e" and r.reference == "ceiling":
            r.ratio = ratio(r.value, ceiling)
            if r.ratio is None and r.value is not None:
                r.note = (r.note or "") + "; run the ceiling section for the ratio"
        if r.section == "pipeline" and r.reference == "torchvision":
            r.ratio = ratio(r.value, next(x.value for x in rows if x.section == "pipeline" and not x.reference))
        r.check()


def run_bench(cfg: DictConfig, opts: dict[str, Any], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected sections on a composed config; returns {"machine", "config", "rows"} (rows as dicts)."""
    seed = int(cfg.get("seed") or 0)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    machine = machine_info()
    config = config_summary(cfg, opts)
    for line in header_lines(machine, config):
        echo(line)

    rows: list[Row] = []
    dm, no_data = None, None
    if set(DATA_SECTIONS) & set(opts["sections"]):
        try:
            dm = datamodule(cfg)
        except DataNotFoundError:
            no_data = f"skipped (no data at {cfg.data.data_dir})"
    runners: dict[str, Callable[[], list[Row]]] = {
        "ceiling": lambda: bench_ceiling(cfg, opts),
        "e2e": lambda: bench_e2e(cfg, opts, dm),
        "pipeline": lambda: bench_pipeline(cfg, opts, dm),
        "lrn": lambda: bench_lrn(cfg, opts),
        "memory": lambda: bench_memory(cfg, opts, dm),
        "precision": lambda: bench_precision(cfg, opts),
        "ema": lambda: bench_ema(cfg, opts),
        "profile": lambda: bench_profile(cfg, opts, dm),
    }
    for name in opts["sections"]:
        t = time.perf_counter()
        if name in DATA_SECTIONS and dm is None:
            new = [Row(name, no_data or "skipped (no data)", None, "")]
        else:
            new = runners[name]()
        if name == "memory":
            new += peak_rss_rows()
        rows += new
        echo(f"  {name}: done in {time.perf_counter() - t:.1f} s")
    _cross_section_ratios(rows)
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    echo("")
    echo(format_table(rows))
    echo(f"load average at the end: {machine['load_avg_end']}")
    return {"machine": machine, "config": config, "rows": [asdict(r) for r in rows]}


def run_command(cfg: DictConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``python -m alexnet_gtsrb.bench`` does with its composed config (``conf/bench.yaml``).

    Validates the ``bench`` options, runs in a temporary output folder unless ``paths.output_dir`` is set,
    and writes the result as JSON to ``bench.out`` when given; returns the result.
    """
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

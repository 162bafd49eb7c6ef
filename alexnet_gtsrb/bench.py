"""Where does training time go? One command that measures the ceiling, the overheads and the memory.

Why: a training run's images/s mixes model compute, the framework, the input pipeline and the shared CPU.
This command separates them in one run, on the configuration you train with, so that a regression (or a
claim like "the data pipeline is not the bottleneck") is a number, not a feeling.

Usage::

    python -m alexnet_gtsrb.bench [hydra overrides] [+bench.OPTION=VALUE ...]
    python -m alexnet_gtsrb.bench data.data_dir=/work/shared/gtsrb data.image_size=227 data.batch_size=64 \\
        model=alexnet_bn model.channels_last=true +bench.out=bench.json

The overrides compose ``conf/train.yaml`` exactly as ``python -m alexnet_gtsrb.train`` would (same groups,
same keys). The bench's own options ride along as ``+bench.NAME=VALUE`` overrides (``bench.NAME=VALUE``
without the ``+`` is accepted too) and are read back from the composed config:

==================  ==========================================  ================================================
option              default                                     meaning
==================  ==========================================  ================================================
sections            [ceiling,e2e,pipeline,lrn,memory]           which sections to run (always in this order);
                                                                ``precision`` (it compiles) and ``ema`` are extra
steps               3                                           timed training steps (ceiling, e2e, lrn)
warmup              1                                           untimed steps first (ceiling, lrn)
e2e_warmup          2                                           untimed batches before e2e timing starts
items               1000                                        dataset items per pipeline (pipeline section)
lrn_batch           null (= data.batch_size)                    batch size of the LRN section
memory_records      null (= the whole training split)           base records for the memory section (then x3)
precision_batch     null (= data.batch_size)                    batch size of the precision section
out                 null                                        also write the table as JSON to this path
==================  ==========================================  ================================================

Sections (each row: section, what, value, unit, ratio vs its reference, target):

``ceiling``   bare PyTorch training steps of ``model.net`` on random tensors at the configured precision,
              memory format, batch and image size (:func:`measure_train_throughput`): what the model can do.
``e2e``       Lightning ``fit`` on the GTSRB tree from disk (``data.data_dir``) with the configured
              augmentation and workers; steady-state img/s between the end of batch ``e2e_warmup`` and the
              last batch (worker start-up and the first prefetch excluded). No validation, checkpointing,
              logger, configured callbacks or LR scheduler (a plateau scheduler needs validation metrics);
              single device. Ratio e2e/ceiling = framework + data overhead; target >= 0.90.
``pipeline``  items/s of the project's training dataset in one process (decode, ROI crop, augment, resize)
              against a torchvision-v2 PIL pipeline doing the same work on the same files; target >= 2x.
              The two run interleaved in rounds on one random item list, after the files are in the page
              cache, so load from other processes hits both alike.
``lrn``       the paper model (variant=paper, groups=2) training img/s without LRN, with the fast LRN and
              with ``torch.nn.LocalResponseNorm``; target fast/none >= 0.75.
``memory``    RSS of the main process and private RSS (USS: pages not shared with the parent) of the
              DataLoader workers while iterating the project's training loader over the training records
              repeated 3x, after 1x and after 3x worth of items (flat = no per-item leak and no copy-on-read
              growth); plus the peak RSS (``ru_maxrss``) of the process and of its largest child.

``precision`` bare training img/s of ``model.net`` in fp32 NCHW, fp32 channels_last, bf16 autocast +
              channels_last and fp32 channels_last under ``torch.compile`` (ratios vs fp32 channels_last);
              the notes name the ops with the most self CPU time in one profiled (torch.profiler) step.

``ema``       milliseconds per update of an exponential moving average of ``model.net``'s weights and buffers
              (torch's ``AveragedModel``, decay 0.998): the per-tensor ``avg_fn`` that Lightning's
              ``EMAWeightAveraging`` uses against the foreach ``multi_avg_fn`` of ``callbacks=ema``
              (ratio foreach / per-tensor; lower is faster). Runs once per optimizer step in training.

Sections that need data print ``skipped (no data at ...)`` when ``data.data_dir`` holds no GTSRB tree.
The header names the machine (CPU, cores, load average, versions, date). Timed rows note how many cores
this process tree kept busy (``1.95/2 cores busy``; e2e counts the DataLoader workers too): well below the
usable count means other jobs took the CPU during that window and the figure is pessimistic. On a shared
machine compare runs only at similar load, and prefer more ``steps`` for the ratios that matter.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import math
import os
import platform
import re
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from alexnet_gtsrb.data.transforms import roi_box
from alexnet_gtsrb.errors import ConfigError, DataNotFoundError
from alexnet_gtsrb.utils import exit_on_user_error

__all__ = ["SECTIONS", "DEFAULTS", "Row", "compose_config", "run_bench", "main"]

SECTIONS = ("ceiling", "e2e", "pipeline", "lrn", "memory", "precision", "ema")
DEFAULT_SECTIONS = ["ceiling", "e2e", "pipeline", "lrn", "memory"]  # precision compiles: ask for it
DEFAULTS: dict[str, Any] = {
    "sections": DEFAULT_SECTIONS,
    "steps": 3,
    "warmup": 1,
    "e2e_warmup": 2,
    "items": 1000,
    "lrn_batch": None,
    "memory_records": None,
    "precision_batch": None,
    "out": None,
}
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
_BENCH_ARG = re.compile(r"^\+{0,2}bench\.")
MIB = 1024 * 1024


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


def _ratio(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or ref == 0:
        return None
    return value / ref


# ------------------------------------------------------------------------------------------------ options
def split_args(argv: Sequence[str]) -> list[str]:
    """Hydra overrides with bench options normalised to ``+bench.NAME=VALUE`` (the key is not in train.yaml)."""
    out = []
    for arg in argv:
        if _BENCH_ARG.match(arg):
            arg = "+bench." + _BENCH_ARG.sub("", arg, count=1)
        out.append(arg)
    return out


def bench_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``bench`` block of the composed config merged over :data:`DEFAULTS`, validated."""
    given = cfg.get("bench") or {}
    given = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else dict(given)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown bench option(s) {unknown}; allowed: {', '.join(DEFAULTS)}.")
    opts = {**DEFAULTS, **given}
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
    for key in ("lrn_batch", "memory_records"):
        if opts[key] is not None and int(opts[key]) < 1:
            raise ConfigError(f"bench.{key}={opts[key]} must be >= 1 (or null).")
    return opts


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` through Hydra's compose API (no run folder, no logging)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


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

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _device(cfg: DictConfig) -> torch.device:
    """The device Lightning would pick for ``trainer.accelerator`` (single device)."""
    acc = str(cfg.trainer.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _precision(cfg: DictConfig) -> tuple[str, bool]:
    precision = str(cfg.trainer.get("precision", "32-true"))
    return precision, precision.startswith("bf16")


# ------------------------------------------------------------------------------------------------ CPU share
def _proc_fields(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], utime [11], stime [12])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (DataLoader workers), found by scanning /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_proc_fields(entry.name)[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its live children and its reaped children (0 without /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in ("self", *_children(os.getpid())):
        try:
            f = _proc_fields(pid)
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + reaped.ru_utime + reaped.ru_stime


class CpuMeter:
    """Cores this process tree kept busy over a stretch of wall time.

    Why: on a shared machine a low number means other jobs took the CPU (or the work waited for data), so a
    throughput figure from that window is pessimistic; compare it with the usable core count.
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Begin (or restart) the window."""
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()

    def cores(self) -> float:
        """Average busy cores since :meth:`start`."""
        return (cpu_seconds() - self.cpu) / max(time.perf_counter() - self.wall, 1e-9)


def _cores_note(cores: float) -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"{cores:.2f}/{usable} cores busy"


# ------------------------------------------------------------------------------------------------ sections
def bench_ceiling(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """a. Bare training steps of ``model.net`` on random tensors: the most the model can do here."""
    from hydra.utils import instantiate

    from alexnet_gtsrb.models.bench_utils import measure_train_throughput

    _, bf16 = _precision(cfg)
    net = instantiate(cfg.model.net).to(_device(cfg))
    meter = CpuMeter()
    value = measure_train_throughput(
        net,
        batch=int(cfg.data.batch_size),
        image_size=int(cfg.data.image_size),
        steps=opts["steps"],
        warmup=opts["warmup"],
        bf16=bf16,
        channels_last=bool(cfg.model.channels_last),
    )
    cores = meter.cores()
    del net
    gc.collect()
    return [Row("ceiling", "bare train steps, random tensors", value, "img/s", note=_cores_note(cores))]


def _datamodule(cfg: DictConfig) -> Any:
    """The configured DataModule, prepared and set up; DataNotFoundError when there is no data."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


class SteadyStateTimer(Callback):
    """Times training from the end of batch ``warmup`` to the end of the last batch, counting the images.

    Worker start-up, the first prefetch and one-off allocations fall in the warm-up batches; what remains is
    the steady state a long run sees.
    """

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.t0: float | None = None
        self.t1: float | None = None
        self.images = 0
        self.meter = CpuMeter()
        self.cores: float | None = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if batch_idx + 1 == self.warmup:
            self.t0 = now
            self.meter.start()
        elif batch_idx + 1 > self.warmup:
            self.images += int(batch[1].numel())
            self.t1 = now
            self.cores = self.meter.cores()

    def rate(self) -> float | None:
        """Images per second over the timed batches, or None when there were none."""
        if self.t0 is None or self.t1 is None or self.images == 0:
            return None
        return self.images / (self.t1 - self.t0)


def bench_e2e(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """b. Lightning ``fit`` from disk with the configured model, precision, augmentation and workers."""
    from hydra.utils import instantiate

    warmup, steps = opts["e2e_warmup"], opts["steps"]
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["scheduler"] = None  # a plateau scheduler needs validation metrics; per-step cost is negligible
    model = instantiate(model_cfg, _recursive_=False)
    timer = SteadyStateTimer(warmup, _device(cfg))
    trainer = instantiate(
        cfg.trainer,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        min_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        devices=1,
        num_nodes=1,
        strategy="auto",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|limit_val_batches).*")
        trainer.fit(model, datamodule=dm)
    value = timer.rate()
    note = f"{warmup} warm-up + {timer.images // max(int(cfg.data.batch_size), 1)} timed batches"
    if timer.cores is not None:
        note += f", {_cores_note(timer.cores)} (incl. workers)"
    if value is None:
        note = f"no timed batches: the training loader has fewer than {warmup + 1} batches"
    del trainer, model
    gc.collect()
    return [
        Row("e2e", "Lightning fit, GTSRB from disk", value, "img/s", reference="ceiling", target=">= 0.90", note=note)
    ]


def torchvision_reference(image_size: int, roi: bool) -> Callable[[Any], torch.Tensor]:
    """record -> uint8 CHW tensor: PIL decode, ROI crop, torchvision-v2 affine + colour jitter + resize.

    The same work as the project's ``gtsrb`` preset, the way a typical torchvision pipeline does it. Output
    stays uint8 (the project also converts to float on the device, after batching), so neither side pays for
    a float conversion here.
    """
    from PIL import Image
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.Resize((image_size, image_size)),
            v2.PILToTensor(),
            v2.ToDtype(torch.uint8, scale=True),
        ]
    )

    def item(record: Any) -> torch.Tensor:
        with Image.open(record.path) as im:
            im = im.convert("RGB")
            if roi and record.roi is not None:
                im = im.crop(roi_box(record.roi, im.size, (record.width, record.height)))
            return tf(im)

    return item


def bench_pipeline(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """c. Items/s of the training dataset in one process vs a torchvision-v2 PIL pipeline on the same files."""
    ds = dm.train_set
    n = opts["items"]
    rng = np.random.default_rng(int(cfg.get("seed") or 0))
    order = rng.choice(len(ds), size=n, replace=n > len(ds)).tolist()
    for i in set(order):  # page cache warm for both sides: decode is measured, not the disk
        with open(ds.records[i].path, "rb") as f:
            f.read()
    ref = torchvision_reference(int(cfg.data.image_size), bool(ds.roi))
    project = ds.__getitem__
    reference = lambda i: ref(ds.records[i])
    for i in order[:10]:
        project(i), reference(i)
    rounds = max(1, min(4, n // 50))
    chunks = [order[r::rounds] for r in range(rounds)]
    spent = {"project": 0.0, "reference": 0.0}
    for chunk in chunks:  # interleaved, so other processes' load hits both sides alike
        for name, fn in (("project", project), ("reference", reference)):
            t = time.perf_counter()
            for i in chunk:
                fn(i)
            spent[name] += time.perf_counter() - t
    mine, theirs = n / spent["project"], n / spent["reference"]
    preset = dm.augment.get("preset", "none")
    return [
        Row(
            "pipeline",
            f"project dataset (cv2 + albumentations, {preset})",
            mine,
            "items/s",
            reference="torchvision",
            target=">= 2x",
            note=f"{n} items, 1 process",
        ),
        Row("pipeline", "torchvision v2 on PIL (same work)", theirs, "items/s", note="reference"),
    ]


def bench_lrn(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """d. The paper model's training img/s without LRN, with the fast LRN and with torch's LRN."""
    from alexnet_gtsrb.models.alexnet import AlexNet
    from alexnet_gtsrb.models.bench_utils import measure_train_throughput

    _, bf16 = _precision(cfg)
    batch = int(opts["lrn_batch"] or cfg.data.batch_size)
    rows, ref = [], None
    for label, lrn, impl in (("none", False, "fast"), ("fast", True, "fast"), ("torch", True, "torch")):
        torch.manual_seed(0)
        net = AlexNet(
            int(cfg.data.num_classes),
            int(cfg.data.image_size),
            variant="paper",
            groups=2,
            lrn=lrn,
            lrn_impl=impl,
            batch_norm=False,
            init="paper",
        ).to(_device(cfg))
        meter = CpuMeter()
        value = measure_train_throughput(
            net,
            batch=batch,
            image_size=int(cfg.data.image_size),
            steps=opts["steps"],
            warmup=opts["warmup"],
            bf16=bf16,
            channels_last=bool(cfg.model.channels_last),
        )
        note = _cores_note(meter.cores())
        del net
        gc.collect()
        if label == "none":
            ref = value
            rows.append(Row("lrn", "paper model, no LRN", value, "img/s", note=f"batch {batch}, {note}"))
        else:
            what = "fast LRN (alexnet_gtsrb.models.lrn)" if impl == "fast" else "torch.nn.LocalResponseNorm"
            rows.append(
                Row(
                    "lrn",
                    f"paper model, {what}",
                    value,
                    "img/s",
                    reference="no LRN",
                    target=">= 0.75" if impl == "fast" else None,
                    note=note,
                )
            )
    for r in rows:
        r.ratio = _ratio(r.value, ref) if r.reference else None
    return rows


def _profile_step(net: torch.nn.Module, batch: int, size: int, bf16: bool, top: int = 3) -> str:
    """torch.profiler over one training step: the ops with the most self CPU time, as 'op share%'."""
    from torch.profiler import ProfilerActivity, profile

    from alexnet_gtsrb.models.bench_utils import measure_train_throughput

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        measure_train_throughput(net, batch=batch, image_size=size, steps=1, warmup=0, bf16=bf16)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in events[:top])


def bench_precision(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """f. The configured network's bare training img/s in fp32 NCHW, fp32 channels_last, bf16 autocast +
    channels_last, and fp32 channels_last under ``torch.compile``; bf16 and fp32 steps profiled."""
    from hydra.utils import instantiate

    from alexnet_gtsrb.models.bench_utils import measure_train_throughput

    batch = int(opts["precision_batch"] or cfg.data.batch_size)
    size = int(cfg.data.image_size)
    rows: list[Row] = []
    variants = (
        ("fp32, NCHW", False, False, False),
        ("fp32, channels_last", False, True, False),
        ("bf16 autocast, channels_last", True, True, False),
        ("fp32, channels_last, torch.compile", False, True, True),
    )
    for what, bf16, channels_last, compiled in variants:
        torch.manual_seed(0)
        net = instantiate(cfg.model.net).to(_device(cfg))
        note = f"batch {batch}"
        if not compiled:
            prof_net = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            if channels_last:  # profile the two precisions the question is about
                note += "; top ops: " + _profile_step(prof_net, batch, size, bf16)
        run_net = torch.compile(net) if compiled else net
        warmup = max(1, opts["warmup"]) + (1 if compiled else 0)  # compile happens in the first steps
        meter = CpuMeter()
        value = measure_train_throughput(
            run_net,
            batch=batch,
            image_size=size,
            steps=opts["steps"],
            warmup=warmup,
            bf16=bf16,
            channels_last=channels_last,
        )
        note += f"; {_cores_note(meter.cores())}"
        ref = None if what == "fp32, channels_last" else "fp32, channels_last"
        rows.append(Row("precision", what, value, "img/s", reference=ref, note=note))
        del net, run_net
        gc.collect()
    base = next(r.value for r in rows if r.reference is None)
    for r in rows:
        r.ratio = _ratio(r.value, base) if r.reference else None
    return rows


def bench_ema(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """g. One EMA update of ``model.net`` (weights and buffers): per-tensor ``avg_fn`` vs foreach."""
    from hydra.utils import instantiate
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

    net = instantiate(cfg.model.net).to(_device(cfg))
    values = sum(t.numel() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    updates = max(5, 5 * opts["steps"])
    per_tensor = "per-tensor avg_fn (EMAWeightAveraging)"
    rows: list[Row] = []
    for what, kwargs in (
        (per_tensor, {"avg_fn": get_ema_avg_fn(0.998)}),
        ("foreach multi_avg_fn (callbacks=ema)", {"multi_avg_fn": get_ema_multi_avg_fn(0.998)}),
    ):
        average = AveragedModel(net, use_buffers=True, **kwargs)
        average.update_parameters(net)  # the first update only copies
        meter = CpuMeter()
        start = time.perf_counter()
        for _ in range(updates):
            average.update_parameters(net)
        ms = (time.perf_counter() - start) / updates * 1000
        note = f"{updates} updates of {values:,} values; {_cores_note(meter.cores())}"
        ref = None if what == per_tensor else per_tensor
        rows.append(Row("ema", f"EMA update, {what}", ms, "ms", reference=ref, note=note))
        del average
    rows[1].ratio = _ratio(rows[1].value, rows[0].value)
    del net
    gc.collect()
    return rows


def _rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _uss(pid: int | str) -> int:
    """Private (unshared) resident bytes of a process: what it owns beyond the pages shared with its parent.

    A forked DataLoader worker's RSS counts every page it shares with the main process; its growth from
    copy-on-write (Python refcounts touching the record list, per-item leaks) shows up here instead.
    Falls back to RSS where ``smaps_rollup`` is unavailable.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return _rss(pid)
    kib = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kib += int(line.split()[1])
    return kib * 1024


def _worker_pids(iterator: Any) -> list[int]:
    """PIDs of a DataLoader iterator's worker processes (empty for an in-process loader)."""
    return [w.pid for w in getattr(iterator, "_workers", []) if w.pid]


def bench_memory(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """e. RSS while iterating the training loader over the records repeated 3x: after 1x and after 3x."""
    from alexnet_gtsrb.data.dataset import GTSRBDataset

    ts = dm.train_set
    base = list(ts.records[: opts["memory_records"]] if opts["memory_records"] else ts.records)
    ds = GTSRBDataset(base * 3, ts.transform, roi=ts.roi, flip=ts.flip, on_bad_image=ts.on_bad_image)
    loader = dm._loader(ds, train=True)  # the project's exact training-loader settings, on the longer list
    batch = int(cfg.data.batch_size)
    one_x = len(base)
    seen, marks = 0, {}
    t0 = time.perf_counter()
    it = iter(loader)
    pids: list[int] = []
    for images, _, _ in it:
        seen += int(images.shape[0])
        if not marks:
            pids = _worker_pids(it)
            marks["first batch"] = (seen, _rss(), sum(_uss(p) for p in pids))
        if "1x" not in marks and seen >= one_x:
            marks["1x"] = (seen, _rss(), sum(_uss(p) for p in pids))
    marks["3x"] = (seen, _rss(), sum(_uss(p) for p in pids))
    elapsed = time.perf_counter() - t0
    del it, loader, ds
    gc.collect()
    workers = len(pids)
    rows = []
    for who, k in (("RSS main process", 1), (f"private RSS (USS) of {workers} loader workers, sum", 2)):
        if k == 2 and not workers:
            continue
        ref = marks["1x"][k] if "1x" in marks else None
        for name, mark in marks.items():
            r = Row("memory", f"{who}, after {name} ({mark[0]} items)", mark[k] / MIB, "MiB")
            if name == "3x" and ref:
                r.ratio, r.reference, r.target = mark[k] / ref, "after 1x", "<= 1.05"
            rows.append(r)
    rows.append(
        Row(
            "memory",
            f"loader throughput over {seen} items (batch {batch})",
            seen / elapsed,
            "items/s",
            note=f"{workers} workers",
        )
    )
    return rows


def peak_rss_rows() -> list[Row]:
    """Peak RSS (``ru_maxrss``) of this process and of its largest finished child."""
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / MIB
    return [
        Row("memory", "peak RSS of this process (ru_maxrss)", own, "MiB", note="whole bench run"),
        Row("memory", "peak RSS of the largest child (loader worker)", kids, "MiB", note="ru_maxrss, children"),
    ]


# ------------------------------------------------------------------------------------------------ driver
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
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        body.append(
            (
                r.section,
                r.what,
                _fmt(r.value) if r.value is not None else "",
                r.unit if r.value is not None else "",
                ratio,
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


def _config_summary(cfg: DictConfig, opts: dict[str, Any]) -> dict[str, Any]:
    net = cfg.model.net
    return {
        "model": f"{net.variant} groups={net.groups} lrn={net.lrn}/{net.lrn_impl} batch_norm={net.batch_norm}",
        "precision": _precision(cfg)[0],
        "channels_last": bool(cfg.model.channels_last),
        "batch_size": int(cfg.data.batch_size),
        "image_size": int(cfg.data.image_size),
        "num_workers": int(cfg.data.num_workers),
        "augment": cfg.data.augment.get("preset", "none"),
        "data_dir": str(cfg.data.data_dir),
        "device": str(_device(cfg)),
        "bench": {k: v for k, v in opts.items() if k != "out"},
    }


def run_bench(cfg: DictConfig, opts: dict[str, Any], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected sections on a composed config; returns {"machine", "config", "rows"} (rows as dicts)."""
    seed = int(cfg.get("seed") or 0)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    machine = machine_info()
    config = _config_summary(cfg, opts)
    echo(
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable, torch threads "
        f"{machine['torch_threads']}), load {machine['load_avg']}, torch {machine['torch']}, torchvision "
        f"{machine['torchvision']}, lightning {machine['lightning']}, python {machine['python']}, {machine['date']}"
    )
    echo("config:  " + ", ".join(f"{k}={v}" for k, v in config.items() if k != "bench"))
    echo("bench:   " + ", ".join(f"{k}={v}" for k, v in config["bench"].items()))

    rows: list[Row] = []
    dm, no_data = None, None
    if {"e2e", "pipeline", "memory"} & set(opts["sections"]):
        try:
            dm = _datamodule(cfg)
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
    }
    for name in opts["sections"]:
        t = time.perf_counter()
        if name in ("e2e", "pipeline", "memory") and dm is None:
            new = [Row(name, no_data or "skipped (no data)", None, "")]
        else:
            new = runners[name]()
        if name == "memory":
            new += peak_rss_rows()
        rows += new
        echo(f"  {name}: done in {time.perf_counter() - t:.1f} s")
    by_what = {r.section: r.value for r in rows if r.section == "ceiling"}
    for r in rows:
        if r.section == "e2e" and r.reference == "ceiling":
            r.ratio = _ratio(r.value, by_what.get("ceiling"))
            if r.ratio is None and r.value is not None:
                r.note = (r.note or "") + "; run the ceiling section for the ratio"
        if r.section == "pipeline" and r.reference == "torchvision":
            r.ratio = _ratio(r.value, next(x.value for x in rows if x.section == "pipeline" and not x.reference))
        r.check()
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    echo("")
    echo(format_table(rows))
    echo(f"load average at the end: {machine['load_avg_end']}")
    return {"machine": machine, "config": config, "rows": [asdict(r) for r in rows]}


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse overrides, compose the config, run the bench, print the table, write JSON if asked."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return {}
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "alexnet_gtsrb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    user_keys = {a.split("=", 1)[0].lstrip("+~") for a in argv}
    cfg = compose_config(split_args(argv))
    opts = bench_options(cfg)
    with tempfile.TemporaryDirectory(prefix="alexnet_gtsrb_bench-") as tmp:
        if "paths.output_dir" not in user_keys:  # ${hydra:runtime.output_dir} has no value outside @hydra.main
            with open_dict(cfg):
                cfg.paths.output_dir = tmp
        result = run_bench(cfg, opts)
    if opts["out"]:
        out = Path(str(opts["out"])).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""The sections that read the GTSRB tree: ``e2e``, ``pipeline`` and ``memory`` (one function each).

Each takes the composed config, the validated bench options and the set-up DataModule (:func:`datamodule`)
and returns its table rows.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from alexnet_gtsrb.bench.options import Row, device
from alexnet_gtsrb.bench.proc import MIB, cores_note, peak_rss_mib, rss, uss, worker_pids
from alexnet_gtsrb.bench.throughput import SteadyStateTimer
from alexnet_gtsrb.data.io import roi_box

__all__ = [
    "bench_e2e",
    "bench_memory",
    "bench_pipeline",
    "datamodule",
    "fit_batches",
    "peak_rss_rows",
    "torchvision_reference",
]


def datamodule(cfg: DictConfig) -> Any:
    """The configured DataModule, prepared and set up; DataNotFoundError when there is no data."""
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fit_batches(cfg: DictConfig, dm: Any, batches: int, callbacks: list, profiler: Any = None) -> None:
    """Lightning ``fit`` of ``batches`` training batches of the configured model on ``dm``: one device, no
    validation, checkpointing, logger or LR scheduler (a plateau scheduler needs validation metrics; the
    per-step cost is negligible); only ``callbacks`` (and ``profiler``)."""
    model_cfg: Any = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["scheduler"] = None
    model = instantiate(model_cfg, _recursive_=False)
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=False,
        profiler=profiler,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        min_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        devices=1,
        num_nodes=1,
        strategy="auto",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|limit_val_batches).*")
        trainer.fit(model, datamodule=dm)
    del trainer, model
    gc.collect()


def bench_e2e(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """b. Lightning ``fit`` from disk with the configured model, precision, augmentation and workers."""
    warmup, steps = opts["e2e_warmup"], opts["steps"]
    timer = SteadyStateTimer(warmup, device(cfg))
    fit_batches(cfg, dm, warmup + steps, [timer])
    value = timer.rate()
    note = f"{warmup} warm-up + {timer.images // max(int(cfg.data.batch_size), 1)} timed batches"
    if timer.cores is not None:
        note += f", {cores_note(timer.cores)} (incl. workers)"
    if value is None:
        note = f"no timed batches: the training loader has fewer than {warmup + 1} batches"
    wait = timer.data_wait_fraction()
    wait_note = "time from one batch's end to the next one's start: loader + copy to the device; 0 = never waits"
    return [
        Row("e2e", "Lightning fit, GTSRB from disk", value, "img/s", reference="ceiling", target=">= 0.90", note=note),
        Row("e2e", "waiting for the next batch", wait, "of fit time", note=wait_note),
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
        with Image.open(record.path) as opened:
            im = opened.convert("RGB")
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


def bench_memory(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """e. RSS while iterating the training loader over the records repeated 3x: after 1x and after 3x."""
    from alexnet_gtsrb.data.dataset import GTSRBDataset

    ts = dm.train_set
    base = list(ts.records[: opts["memory_records"]] if opts["memory_records"] else ts.records)
    cache = dm.caches.get("train")  # with data.cache the items are cache rows (the transform expects them)
    ds = GTSRBDataset(base * 3, ts.transform, roi=ts.roi, flip=ts.flip, on_bad_image=ts.on_bad_image, cache=cache)
    # the project's loader settings (workers, prefetch, pinning, collate) on the longer list, in order: the
    # class-balancing sampler draws indices of the real training split, not of this list
    loader = dm._loader(ds, train=False)
    batch = int(cfg.data.batch_size)
    one_x = len(base)
    seen = 0
    marks: dict[str, tuple[int, int, int]] = {}
    t0 = time.perf_counter()
    it = iter(loader)
    pids: list[int] = []
    for images, _, _ in it:
        seen += int(images.shape[0])
        if not marks:
            pids = worker_pids(it)
            marks["first batch"] = (seen, rss(), sum(uss(p) for p in pids))
        if "1x" not in marks and seen >= one_x:
            marks["1x"] = (seen, rss(), sum(uss(p) for p in pids))
    marks["3x"] = (seen, rss(), sum(uss(p) for p in pids))
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
    own, kids = peak_rss_mib()
    return [
        Row("memory", "peak RSS of this process (ru_maxrss)", own, "MiB", note="whole bench run"),
        Row("memory", "peak RSS of the largest child (loader worker)", kids, "MiB", note="ru_maxrss, children"),
    ]

"""Reading a finished (or running) run folder back: its TensorBoard events, the per-epoch table, its best checkpoint.

A run folder is what ``python -m alexnet_gtsrb.train`` writes under ``logs/<task_name>/runs/<time>/``:
``tensorboard/``, ``checkpoints/``, ``metrics.json``, ``.hydra/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_events(event_dir: Path, recursive: bool = False) -> tuple[dict[str, list], dict[str, list]]:
    """Scalars and images of every event file of a TensorBoard run folder (and its sub-folders if
    ``recursive``), in the order they were written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list] = {}
    images: dict[str, list] = {}
    pattern = "events.out.tfevents.*"
    files = Path(event_dir).rglob(pattern) if recursive else Path(event_dir).glob(pattern)
    for f in sorted(files):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return scalars, images


def epoch_table(scalars: dict[str, list]) -> list[dict[str, Any]]:
    """One row per epoch: train/val accuracy and loss (epoch-level values), lr and minutes since the start."""
    epoch_at: dict[int, int] = {}
    for e in scalars.get("epoch", []):
        epoch_at.setdefault(e.step, int(e.value))  # Lightning logs the epoch with every metric
    start = min((e.wall_time for events in scalars.values() for e in events), default=0.0)
    rows: dict[int, dict[str, Any]] = {}
    tags = {"train/acc": "train_acc", "val/acc": "val_acc", "train/loss": "train_loss", "val/loss": "val_loss"}
    lr_tags = sorted(t for t in scalars if t.startswith("lr-"))
    for tag, col in [*tags.items(), *((t, "lr") for t in lr_tags[:1])]:
        for i, e in enumerate(scalars.get(tag, [])):
            epoch = epoch_at.get(e.step, i)
            row = rows.setdefault(epoch, {"epoch": epoch + 1})
            row[col] = e.value
            if col == "val_acc":
                row["minutes"] = round((e.wall_time - start) / 60, 2)
    return [rows[k] for k in sorted(rows)]


def best_checkpoint(run_dir: Path) -> Path | None:
    """metrics.json's best checkpoint if it is still there, else the newest epoch_*.ckpt, else last.ckpt."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        named = json.loads(metrics.read_text()).get("best_checkpoint")
        if named and Path(named).is_file():
            return Path(named)
    found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = run_dir / "checkpoints" / "last.ckpt"
    return found[-1] if found else (last if last.is_file() else None)

"""Figures of a finished run, from its own files: ``python -m alexnet_gtsrb.report <run_dir> [out_dir]``.

Writes into ``out_dir`` (default ``<run_dir>/report``):

- ``curves.png``: accuracy and loss per epoch, training against validation (the origin Keras script's two
  plots), read from the run's TensorBoard event files;
- ``conv1.png``: the best checkpoint's 96 conv1 kernels (0-47 | 48-95 for the two groups);
- ``curves.csv``: the per-epoch numbers behind the curves (epoch, train/val accuracy and loss, lr, wall time).

The confusion matrix and misclassified images come from ``python -m alexnet_gtsrb.evaluate``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["read_events", "epoch_table", "curves_figure", "conv1_figure", "best_checkpoint", "write_report"]


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


def curves_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """Accuracy and loss against epoch, training and validation (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (metric, name) in zip(axes, [("acc", "accuracy"), ("loss", "loss")], strict=True):
        for stage in ("train", "val"):
            points = [(r["epoch"], r[f"{stage}_{metric}"]) for r in rows if f"{stage}_{metric}" in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=stage)
        ax.set_title(f"model {name}" + (f" ({title})" if title else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def conv1_figure(ckpt_path: Path) -> Any:
    """The checkpoint's conv1 kernels as one image (two halves for a two-group network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexnet_gtsrb.evaluate import load_classifier
    from alexnet_gtsrb.models.alexnet import conv1_kernel_grid

    model, _ = load_classifier(str(ckpt_path))
    grid = conv1_kernel_grid(getattr(model.net, "_orig_mod", model.net)).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(12, 5))
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(f"conv1 kernels ({Path(ckpt_path).name}): 0-47 | 48-95")
    ax.axis("off")
    fig.tight_layout()
    return fig


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


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write curves.png, curves.csv and conv1.png for a run folder; returns their paths."""
    from alexnet_gtsrb.errors import UserError

    run_dir = Path(run_dir)
    if not (run_dir / "tensorboard").is_dir():
        raise UserError(f"{run_dir} is not a run folder (no tensorboard/ inside): pass logs/<task>/runs/<time>.")
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    scalars, _ = read_events(run_dir / "tensorboard")
    rows = epoch_table(scalars)
    if not rows:
        raise UserError(f"{run_dir}/tensorboard holds no epoch-level metrics yet.")
    written = {"curves.csv": out_dir / "curves.csv", "curves.png": out_dir / "curves.png"}
    cols = ["epoch", "train_acc", "val_acc", "train_loss", "val_loss", "lr", "minutes"]
    with written["curves.csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    _save(curves_figure(rows, title=run_dir.name), written["curves.png"])
    ckpt = best_checkpoint(run_dir)
    if ckpt is not None:
        written["conv1.png"] = out_dir / "conv1.png"
        _save(conv1_figure(ckpt), written["conv1.png"])
    return written


def main(argv: list[str] | None = None) -> None:
    from alexnet_gtsrb.utils import exit_on_user_error

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print(__doc__)
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    written = exit_on_user_error(write_report)(Path(args[0]), Path(args[1]) if len(args) > 1 else None)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()

"""Every figure the project draws (matplotlib, for reports and TensorBoard), the one way they are saved, and
:func:`conv1_kernel_grid`, the kernels as one image tensor (TensorBoard's ``filters/conv1``). Matplotlib runs
headless (the Agg backend), so figures work on servers, in CI and under ``nohup``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.utils.wrappers import unwrap_compiled

DPI = 110


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (tight bounding box) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return path


def confusion_figure(confmat: torch.Tensor) -> Any:
    """A matplotlib figure of the row-normalised confusion matrix (rows: true class, columns: predicted)."""
    counts = confmat.float()
    norm = (counts / counts.sum(dim=1, keepdim=True).clamp_min(1)).numpy()  # a row without images stays 0
    n = norm.shape[0]
    fig, ax = pyplot().subplots(figsize=(12, 11))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (rows normalised to 1)")
    ax.set_xticks(range(n), [str(c) for c in range(n)], fontsize=6)
    ax.set_yticks(range(n), [f"{c} {class_name(c)[:28]}" for c in range(n)], fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def misclassified_figure(items: list[tuple[np.ndarray, int, int, float]], max_items: int = 64) -> Any:
    """A grid (8 columns) of misclassified images titled with true and predicted names and the probability."""
    captions = [
        (image, f"T: {class_name(t)[:24]}\nP: {class_name(p)[:24]} ({prob:.2f})") for image, t, p, prob in items
    ]
    title = (
        f"{len(items)} misclassified test images (first {max_items} at most)" if items else "no misclassified images"
    )
    return image_grid_figure([captions[i : i + 8] for i in range(0, len(items), 8)], title=title, scale=2.2)


def curves_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """Accuracy and loss against epoch, training and validation (matplotlib figure)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4))
    for ax, (metric, name) in zip(axes, [("acc", "accuracy"), ("loss", "loss")], strict=True):
        for stage in ("train", "val"):
            points = [(r["epoch"], r[f"{stage}_{metric}"]) for r in rows if f"{stage}_{metric}" in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=stage)
        ax.set(title=f"model {name}" + (f" ({title})" if title else ""), xlabel="epoch", ylabel=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def conv1_figure(net: nn.Module, title: str = "") -> Any:
    """conv1's kernels as one matplotlib image (two halves for a two-group network)."""
    grid = conv1_kernel_grid(net).permute(1, 2, 0).numpy()
    fig, ax = pyplot().subplots(figsize=(12, 5))
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(f"conv1 kernels{f' ({title})' if title else ''}: 0-47 | 48-95")
    ax.axis("off")
    fig.tight_layout()
    return fig


def _grid_columns(n: int) -> int:
    """Columns for ``n`` tiles: the smallest divisor of n that is >= sqrt(n), else ceil(sqrt(n))."""
    root = math.isqrt(n - 1) + 1 if n > 1 else 1
    for cols in range(root, min(n, 2 * root) + 1):
        if n % cols == 0:
            return cols
    return root


@torch.no_grad()
def conv1_kernel_grid(net: nn.Module, pad: int = 1, gap: int = 4) -> torch.Tensor:
    """conv1's kernels as one (3, H, W) image in [0, 1], one block per conv2 group, blocks side by side.

    With ``groups=2`` kernels 0-47 (feeding conv2's first group, "GPU 1" in the paper's Fig. 3) form the
    left block and 48-95 the right block, separated by ``gap`` white columns. Each kernel is min-max
    normalised on its own so that low-contrast kernels stay visible.
    """
    from torchvision.utils import make_grid

    convs = [m for m in unwrap_compiled(net).modules() if isinstance(m, nn.Conv2d)]
    weight = convs[0].weight.detach().float().cpu()
    if weight.shape[1] not in (1, 3):
        raise ValueError(f"conv1 must have 1 or 3 input channels to render as an image, got {weight.shape[1]}")
    weight = weight.expand(-1, 3, -1, -1) if weight.shape[1] == 1 else weight
    lo = weight.amin(dim=(1, 2, 3), keepdim=True)
    hi = weight.amax(dim=(1, 2, 3), keepdim=True)
    weight = (weight - lo) / (hi - lo).clamp_min(1e-12)
    n_groups = convs[1].groups if len(convs) > 1 else 1
    blocks = [make_grid(b, nrow=_grid_columns(len(b)), padding=pad, pad_value=1.0) for b in weight.chunk(n_groups)]
    height, last = max(b.shape[1] for b in blocks), len(blocks) - 1
    pads = [(0, gap if i < last else 0, 0, height - b.shape[1]) for i, b in enumerate(blocks)]
    return torch.cat([nn.functional.pad(b, p, value=1.0) for b, p in zip(blocks, pads, strict=True)], dim=2)


def image_grid_figure(
    cells: list[list[tuple[np.ndarray, str]]], row_labels: list[str] | None = None, title: str = "", scale: float = 1.6
) -> Any:
    """A table of images: ``cells[row][col] = (uint8 HxWx3 image, title)``; row labels on the left."""
    rows = max(1, len(cells))
    cols = max([1] + [len(r) for r in cells])
    fig, axes = pyplot().subplots(rows, cols, figsize=(cols * scale, rows * scale * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(cells):
        for c, (image, caption) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_title(caption, fontsize=6)
        if row_labels and r < len(row_labels):
            axes[r, 0].text(
                -0.08, 0.5, row_labels[r], transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7
            )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.06 if row_labels else 0, 0, 1, 0.96 if title else 1))
    return fig


def reliability_figure(before: list[dict[str, float]], after: list[dict[str, float]], summary: dict[str, float]) -> Any:
    """Reliability diagrams (accuracy against confidence per bin, with counts) before and after temperature
    scaling; ``summary`` holds ece, ece_scaled and temperature."""
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4.4), sharey=True)
    panels = [
        (before, f"before: ECE {summary['ece']:.4f}"),
        (after, f"T = {summary['temperature']:.3f}: ECE {summary['ece_scaled']:.4f}"),
    ]
    for ax, (bins, caption) in zip(axes, panels, strict=True):
        width = bins[0]["upper"] - bins[0]["lower"]
        full = [b for b in bins if b["count"]]
        lefts, accs = [b["lower"] for b in full], [b["accuracy"] for b in full]
        ax.bar(lefts, accs, width=width, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
        gaps = [b["confidence"] - b["accuracy"] for b in full]
        ax.bar(lefts, gaps, bottom=accs, width=width, align="edge", color="red", alpha=0.25, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        for b in full:
            ax.text(b["lower"] + width / 2, 0.02, str(b["count"]), ha="center", fontsize=5, rotation=90)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence")
        ax.set_title(caption, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig

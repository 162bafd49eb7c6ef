"""Per-class test results: one row per class (support, correct, accuracy), worst first, as CSV and Markdown."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.utils.files import write_table

SCORES = ("accuracy", "precision", "recall", "f1")


def class_metrics(num_classes: int, device: Any = "cpu") -> Any:
    """torchmetrics per class (``average=None``) and macro-averaged: accuracy (= recall per class), precision,
    recall and F1, plus the confusion matrix; ``update(probs, labels)`` and ``compute()`` as one collection."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    kinds: dict[str, Any] = {"accuracy": MulticlassAccuracy, "precision": MulticlassPrecision}
    kinds.update(recall=MulticlassRecall, f1=MulticlassF1Score)
    metrics: dict[str, Any] = {"acc_micro": MulticlassAccuracy(num_classes=num_classes, average="micro")}
    for name, kind in kinds.items():
        metrics[name] = kind(num_classes=num_classes, average=None)
        metrics[f"{name}_macro"] = kind(num_classes=num_classes, average="macro")
    metrics["confmat"] = MulticlassConfusionMatrix(num_classes=num_classes)
    return MetricCollection(metrics).to(device)


def per_class_rows(scores: Mapping[str, torch.Tensor], confmat: torch.Tensor) -> list[dict[str, Any]]:
    """One row per class, worst accuracy first (classes without test images last), ties by class id.

    ``scores`` holds torchmetrics' per-class accuracy, precision, recall and F1; support and correct counts are
    the confusion matrix's row sums and diagonal. A class without test images has no accuracy or recall.
    """
    support, diag = confmat.sum(dim=1), confmat.diag()
    rows = []
    for c in range(len(support)):
        n = int(support[c])
        row: dict[str, Any] = {"class_id": c, "name": class_name(c), "support": n, "correct": int(diag[c])}
        for name in SCORES:
            row[name] = float(scores[name][c]) if n else float("nan")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["support"] == 0, r["accuracy"] if r["support"] else 0.0, r["class_id"]))


def write_per_class(rows: list[dict[str, Any]], out_dir: Path, macro: Mapping[str, float] | None = None) -> None:
    """per_class.csv (machine-readable) and per_class.md (a Markdown table; macro averages in its last row)."""
    footer = None
    if macro:
        total, correct = sum(r["support"] for r in rows), sum(r["correct"] for r in rows)
        footer = {"name": "**macro average**", "support": total, "correct": correct, **macro}
    write_table(rows, out_dir, "per_class", footer=footer)

"""Per-class test results: one row per class (support, correct, accuracy), worst first, as CSV and Markdown."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from alexnet_gtsrb.data.classes import class_name


def per_class_rows(acc: torch.Tensor, confmat: torch.Tensor) -> list[dict[str, Any]]:
    """One row per class, worst accuracy first (classes without test images last), ties by class id.

    ``acc`` is torchmetrics' per-class accuracy; support and correct counts are the confusion matrix's row
    sums and diagonal.
    """
    support, diag = confmat.sum(dim=1), confmat.diag()
    rows = []
    for c in range(len(support)):
        n = int(support[c])
        rows.append(
            {
                "class_id": c,
                "name": class_name(c),
                "support": n,
                "correct": int(diag[c]),
                "accuracy": float(acc[c]) if n else float("nan"),
            }
        )
    return sorted(rows, key=lambda r: (r["support"] == 0, r["accuracy"] if r["support"] else 0.0, r["class_id"]))


def write_per_class(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """per_class.csv (machine-readable) and per_class.md (a Markdown table for reports)."""
    fields = ["class_id", "name", "support", "correct", "accuracy"]
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "accuracy": "" if r["support"] == 0 else f"{r['accuracy']:.4f}"})
    lines = ["| class | name | support | correct | accuracy |", "|---:|:---|---:|---:|---:|"]
    for r in rows:
        acc = "n/a" if r["support"] == 0 else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['class_id']} | {r['name']} | {r['support']} | {r['correct']} | {acc} |")
    (out_dir / "per_class.md").write_text("\n".join(lines) + "\n")

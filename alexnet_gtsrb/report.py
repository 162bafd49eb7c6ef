"""Entry point: ``python -m alexnet_gtsrb.report RUN_DIR [OUT_DIR]``, figures of a finished run from its own files.

Writes into ``OUT_DIR`` (default ``RUN_DIR/report``) ``curves.png`` (accuracy and loss per epoch, training against
validation, as the origin Keras script plots them) and ``curves.csv`` / ``.md`` (the numbers, with lr and minutes),
read from the run's ``csv/.../metrics.csv`` where it has one, else from its TensorBoard event files; and
``conv1.png``, the conv1 kernels of the checkpoint its ``test_ckpt`` rule picks (by default ``last.ckpt``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.inference import load_classifier
from alexnet_gtsrb.plots import conv1_figure, curves_figure, save_figure
from alexnet_gtsrb.run_folder import epoch_table, read_scalars, rule_checkpoint
from alexnet_gtsrb.utils.cli import exit_on_user_error
from alexnet_gtsrb.utils.files import write_table

CSV_COLUMNS = ["epoch", "train_acc", "val_acc", "train_loss", "val_loss", "lr", "minutes"]


def write_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write curves.png, curves.csv and conv1.png for a run folder; returns their paths."""
    run_dir = Path(run_dir)
    scalars, source = read_scalars(run_dir)
    if source is None and any((run_dir / name).exists() for name in ("mlruns", "checkpoints", "metrics.json")):
        raise UserError(
            f"{run_dir} is a run folder without csv/ or tensorboard/ (logged to MLflow only, or no logger): the "
            "report reads those; browse an MLflow store with `mlflow ui`, or train with logger=[mlflow,csv]."
        )
    if source is None:
        raise UserError(
            f"{run_dir} is not a run folder (no csv/ or tensorboard/ inside): pass logs/<task>/runs/<time>."
        )
    rows = epoch_table(scalars)
    if not rows:
        raise UserError(f"{source} holds no epoch-level metrics yet.")
    ckpt, _ = rule_checkpoint(run_dir)
    model = load_classifier(str(ckpt))[0] if ckpt is not None else None  # checked before anything is written
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table([{c: r.get(c) for c in CSV_COLUMNS} for r in rows], out_dir, "curves")
    curves = save_figure(curves_figure(rows, title=run_dir.name), out_dir / "curves.png")
    written = {"curves.csv": out_dir / "curves.csv", "curves.png": curves}
    if model is not None and ckpt is not None:
        written["conv1.png"] = save_figure(conv1_figure(model.net, title=ckpt.name), out_dir / "conv1.png")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Parse RUN_DIR [OUT_DIR], write the report, print what was written."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_gtsrb.report",
        description="Training curves (PNG + CSV) and conv1 kernels of a run folder, from its own files.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder: logs/<task_name>/runs/<time>")
    parser.add_argument("out_dir", type=Path, nargs="?", default=None, help="where to write (default RUN_DIR/report)")
    args = parser.parse_args(argv)
    written = exit_on_user_error(write_report)(args.run_dir, args.out_dir)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()

"""Entry point: ``python -m alexnet_gtsrb.evaluate ckpt_path=PATH [data.data_dir=DIR] [test_views=10] [split=val]``.

Evaluates a trained checkpoint on the official GTSRB test images and writes a report into the run folder
(``${paths.output_dir}``): ``metrics.json``, ``per_class.csv`` / ``per_class.md`` (worst classes first),
``confusion_matrix.png`` (row-normalised, 43x43), ``misclassified.png`` (up to 64 errors with true/predicted
names), ``misclassified.csv`` (every error: file, true and predicted class, confidence; the rows to compare
two checkpoints image by image) and TensorBoard scalars/images under ``tensorboard/``.

Why a separate entry point: training tests once, with the checkpoint its ``test_ckpt`` rule names; this
re-evaluates any checkpoint later, with per-class numbers and pictures, without re-training. Given a run folder
(``ckpt_path=logs/<task>/runs/<time>``) it scores the checkpoint that run's own rule picks (by default
``checkpoints/last.ckpt``), the one its ``metrics.json`` reports, and prints which rule and which file.

Every accuracy comes with its 95% Wilson interval (:mod:`alexnet_gtsrb.evaluation.intervals`), and the
output says what the test set is: the whole official test set (12,630 images) or not, and then that its numbers are
not comparable with published full-test results.

The evaluation pipeline (image size, preset, ROI crop, mean/std) comes from the checkpoint itself, so a model
is evaluated exactly as it was validated; any ``data.*`` key given on the command line wins.

Building blocks live elsewhere: loading and settings in :mod:`alexnet_gtsrb.inference`, test-time
augmentation and per-class tables in :mod:`alexnet_gtsrb.evaluation`, figures in :mod:`alexnet_gtsrb.plots`.
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("eval", "alexnet-gtsrb-evaluate", __name__ == "__main__")  # --help/--version before torch is imported

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.data.transforms import view_source
from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.evaluation.intervals import describe_test_set, format_accuracy, interval_metrics, track_interval
from alexnet_gtsrb.evaluation.per_class import SCORES, class_metrics, per_class_rows, write_per_class
from alexnet_gtsrb.evaluation.views import CROPS, ten_view_probabilities
from alexnet_gtsrb.inference import data_config, eval_settings, load_classifier, pick_device
from alexnet_gtsrb.loggers import LoggerGroup
from alexnet_gtsrb.plots import confusion_figure, misclassified_figure, save_figure
from alexnet_gtsrb.run_folder import checkpoint_for
from alexnet_gtsrb.utils.cli import hydra_entry_point, print_rank_zero
from alexnet_gtsrb.utils.files import atomic_write

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED = 64


# -- the evaluation -------------------------------------------------------------------------------------------
def _ten_views(cfg: DictConfig) -> bool:
    """``test_views=10``: the paper's 10 views (5 crops and their label-mapped flips); 1: the centre view."""
    views = cfg.get("test_views")
    if views is not None and (views not in (1, 10) or isinstance(views, bool)):
        raise ConfigError(f"test_views={views!r}; allowed: 1 (one centre view), 10 (5 crops + label-mapped flips).")
    return views == 10


SPLITS = ("test", "val")


def _committee(cfg: DictConfig, device: str, settings: dict[str, Any]) -> list[Any]:
    """The further checkpoints of ``committee=[...]`` (files or run folders), each with the same evaluation
    settings as ``ckpt_path``'s (a committee averages probabilities of one image, so it must see one image)."""
    members = cfg.get("committee") or []
    if isinstance(members, str):
        raise ConfigError(f"committee={members!r} must be a list: committee=[run_a,run_b].")
    models = []
    for member in members:
        file, chosen_by = checkpoint_for(str(member))
        model, data_hp = load_classifier(file, device)
        if eval_settings(model, data_hp) != settings:
            raise ConfigError(f"committee: {file} was trained with other evaluation settings than ckpt_path's.")
        print_rank_zero(f"committee member: {file} ({chosen_by})")
        models.append(model)
    return models


def _scored_set(cfg: DictConfig, datamodule: Any, size: int) -> tuple[str, Any, Any, bool]:
    """(split name, dataset, loader factory, ten views): the official test images, or with ``split=val`` the validation
    split the training run held out (the checkpoint's split settings), where recipe decisions are made; with
    ``test_views=10`` the dataset yields the image the 10 views are cut from."""
    split = cfg.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}; allowed: {', '.join(SPLITS)}.")
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    dataset, loader = (
        (datamodule.val_set, datamodule.val_dataloader)
        if split == "val"
        else (datamodule.test_set, datamodule.test_dataloader)
    )
    ten = _ten_views(cfg)
    if ten:
        dataset.transform = view_source(size, datamodule._transform_params())
        print_rank_zero(f"test views: {CROPS} crops (centre + 4 corners) + label-mapped flips")
    return split, dataset, loader, ten


@torch.inference_mode()
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (with ``committee``: the mean probabilities of several checkpoints) on the
    official test images or the validation split; write the report; return the metrics dict."""
    device = pick_device(cfg.get("device", "auto"))
    ckpt_file, chosen_by = checkpoint_for(cfg.get("ckpt_path"))
    model, data_hp = load_classifier(ckpt_file, device)
    print_rank_zero(f"checkpoint: {ckpt_file} ({chosen_by})")
    settings = eval_settings(model, data_hp)
    models = [model, *_committee(cfg, device, settings)]
    data_cfg = data_config(cfg.data, settings, data_hp)
    size = int(data_cfg.image_size)
    if size != settings["image_size"]:
        log.warning("data.image_size=%d differs from the checkpoint's %d.", size, settings["image_size"])
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # written last: its presence marks a complete report
    datamodule = instantiate(data_cfg, _convert_="all")
    split, dataset, loader, ten = _scored_set(cfg, datamodule, size)
    scores, wrong, error_rows, by_track = _score(models, datamodule, dataset, loader(), device, size, ten)
    cm = scores["confmat"]
    total = int(cm.sum())
    if total == 0:
        raise UserError(f"No {split} image could be evaluated under {data_cfg.data_dir}.")
    correct = int(cm.diag().sum())
    test_info = describe_test_set(r.label for r in dataset.records)
    if split == "val":
        test_info["note"] = f"the validation split the run held out ({len(dataset.records):,} training-set images)"
    macro = {name: float(scores[f"{name}_macro"]) for name in SCORES}
    rows = per_class_rows(scores, cm)

    write_per_class(rows, out_dir, macro)
    save_figure(confusion_figure(cm), out_dir / "confusion_matrix.png")
    save_figure(misclassified_figure(wrong, MAX_MISCLASSIFIED), out_dir / "misclassified.png")
    _write_errors(error_rows, out_dir / "misclassified.csv")
    metrics = {
        f"{split}/acc": correct / total,
        **interval_metrics(f"{split}/acc", correct, total),
        **_track_metrics(split, by_track),
        f"{split}/acc_torchmetrics": float(scores["acc_micro"]),
        **{f"{split}/{name}_macro": value for name, value in macro.items()},
        "split": split,
        "correct": correct,
        "num_images": total,
        "test_views": 2 * CROPS if ten else 1,
        "ckpt_path": str(ckpt_file),
        "ckpt_chosen_by": chosen_by,
        "committee": [str(m) for m in cfg.get("committee") or []],
        "test_set": test_info,
        "data_dir": str(datamodule.index.root),
        "settings": {**settings, "image_size": size},
        "per_class": rows,
    }
    with atomic_write(out_dir / "metrics.json", "w") as f:  # after every other output, never half-written
        f.write(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    scalars = {f"{split}/acc": correct / total, **{f"{split}/{k}_macro": v for k, v in macro.items()}}
    _log_scalars(cfg, scalars, cm, rows, split)

    _print_summary(metrics, macro, out_dir)
    return metrics


def _track_metrics(split: str, by_track: dict[str | None, list[int]]) -> dict[str, Any]:
    """The track-bootstrap interval of the accuracy, where every image has a track (the validation split)."""
    if not by_track or None in by_track:
        return {}
    low, high = track_interval({t: (c, n) for t, (c, n) in by_track.items() if t is not None})
    return {f"{split}/acc_track_ci_low": low, f"{split}/acc_track_ci_high": high, "tracks": len(by_track)}


def _score(
    models: list[Any], datamodule: Any, dataset: Any, loader: Any, device: str, size: int, ten: bool
) -> tuple[dict[str, Any], list, list, dict[str | None, list[int]]]:
    """One pass over the loader: (torchmetrics scores, the first misclassified images, a row per error,
    [correct, images] per track). Several models: their probabilities averaged (a committee)."""
    metrics_all = class_metrics(int(models[0].hparams.num_classes), device)
    wrong: list[tuple[np.ndarray, int, int, float]] = []
    error_rows: list[dict[str, Any]] = []
    by_track: dict[str | None, list[int]] = {}
    start = 0  # the loader is unshuffled: batch rows are dataset rows start, start + 1, ...
    for images, labels in tqdm(loader, desc="evaluate", unit="batch", disable=None, file=sys.stderr):
        indices = range(start, start + len(labels))
        start += len(labels)
        images, labels = images.to(device), labels.to(device)
        probs = torch.stack(
            [ten_view_probabilities(m, images, size) if ten else m(images).float().softmax(dim=-1) for m in models]
        ).mean(dim=0)
        metrics_all.update(probs, labels)
        conf, pred = probs.max(dim=-1)
        for i, hit in zip(indices, (pred == labels).tolist(), strict=True):
            counts = by_track.setdefault(dataset.records[i].track, [0, 0])
            counts[0] += int(hit)
            counts[1] += 1
        for i in torch.nonzero(pred != labels).flatten().tolist():
            true, guess, confidence = int(labels[i]), int(pred[i]), float(conf[i])
            if len(wrong) < MAX_MISCLASSIFIED:
                wrong.append((images[i].cpu().numpy(), true, guess, confidence))
            path = dataset.records[indices[i]].path
            error_rows.append(_error_row(path, datamodule.index.root, true, guess, confidence))
    return {k: v.cpu() for k, v in metrics_all.compute().items()}, wrong, error_rows, by_track


def _print_summary(metrics: dict[str, Any], macro: dict[str, float], out_dir: Path) -> None:
    total = metrics["num_images"]
    print_rank_zero(f"test set: {metrics['test_set']['note']}")
    print_rank_zero(f"{metrics['split']}/acc: {format_accuracy(metrics['correct'], total)}")
    if "tracks" in metrics:
        low, high = (metrics[f"{metrics['split']}/acc_track_ci_{end}"] for end in ("low", "high"))
        print_rank_zero(f"  95% track-bootstrap interval ({metrics['tracks']} tracks): {low:.4f}-{high:.4f}")
    print_rank_zero("macro averages: " + ", ".join(f"{k} {v:.4f}" for k, v in macro.items()))
    print_rank_zero("worst classes:")
    for line in (out_dir / "per_class.md").read_text().splitlines()[:12]:
        print_rank_zero(line)
    print_rank_zero(f"report: {out_dir}")


def _error_row(path: str, root: Path, true: int, guess: int, confidence: float) -> dict[str, Any]:
    """One misclassified.csv row: the file relative to the data folder, true and predicted class, confidence."""
    file = Path(path)
    return {
        "file": file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix(),
        "true_id": true,
        "true_name": class_name(true),
        "pred_id": guess,
        "pred_name": class_name(guess),
        "confidence": f"{confidence:.4f}",
    }


def _write_errors(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "true_id", "true_name", "pred_id", "pred_name", "confidence"])
        writer.writeheader()
        writer.writerows(rows)


def _log_scalars(
    cfg: DictConfig, scalars: dict[str, float], cm: torch.Tensor, rows: list[dict[str, Any]], split: str
) -> None:
    """<split>/acc, the macro averages and per-class precision/recall/F1 to every logger of the logger group,
    and the confusion-matrix figure to TensorBoard."""
    per_class = {
        f"{split}_class_{name}/{r['class_id']:02d}": r[name] for r in rows if r["support"] for name in SCORES[1:]
    }
    loggers = LoggerGroup(cfg.get("logger"))
    loggers.scalars({**scalars, **per_class}, step=0)
    loggers.figure(f"{split}/confusion_matrix", lambda: confusion_figure(cm))
    loggers.close()


def _test_accuracy(cfg: DictConfig) -> float:
    """Evaluate and return the accuracy (for a sweeper)."""
    metrics = evaluate(cfg)
    return float(metrics[f"{metrics['split']}/acc"])


main = hydra_entry_point("eval", _test_accuracy)

if __name__ == "__main__":
    main()

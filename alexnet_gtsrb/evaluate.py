"""Entry point: ``python -m alexnet_gtsrb.evaluate ckpt_path=PATH [data.data_dir=DIR] [test_views=10] [split=val]``.

Evaluates a trained checkpoint (given a run folder: the checkpoint its own ``test_ckpt`` rule picks, the one its
``metrics.json`` reports) on the official GTSRB test images, or with ``split=val`` on the validation split its
run held out, and writes into the run folder: ``metrics.json``, ``per_class.csv`` / ``.md`` (worst classes
first), ``confusion_matrix.png`` (row-normalised), ``misclassified.png`` (up to 64 errors), ``misclassified.csv``
/ ``.md`` (every error: file, true and predicted class, confidence; to compare two checkpoints image by image)
and TensorBoard scalars/images. Every accuracy comes with its 95% Wilson interval, and the output says whether
the test set is the whole official one (else its numbers are not comparable with published full-test results).
The evaluation pipeline comes from the checkpoint (:func:`alexnet_gtsrb.inference.eval_context`).
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("eval", "alexnet-gtsrb-evaluate", __name__ == "__main__")  # --help/--version before torch is imported

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from tqdm import tqdm

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.data.transforms import view_source
from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.evaluation.intervals import describe_test_set, format_accuracy, interval_metrics, track_interval
from alexnet_gtsrb.evaluation.views import CROPS, check_test_views, ten_view_probabilities
from alexnet_gtsrb.inference import EvalContext, eval_context, eval_settings, load_classifier
from alexnet_gtsrb.plots import confusion_figure, misclassified_figure, save_figure
from alexnet_gtsrb.run_folder import checkpoint_for
from alexnet_gtsrb.utils.cli import hydra_entry_point, print_rank_zero
from alexnet_gtsrb.utils.files import write_table

MAX_MISCLASSIFIED = 64
SPLITS = ("test", "val")
ERROR_COLUMNS = ("file", "true_id", "true_name", "pred_id", "pred_name", "confidence")
#: per class (``average=None``) and macro-averaged; the per-class accuracy is the class's recall
SCORES = {
    "accuracy": MulticlassAccuracy,
    "precision": MulticlassPrecision,
    "recall": MulticlassRecall,
    "f1": MulticlassF1Score,
}


def _committee(cfg: DictConfig, ctx: EvalContext) -> list[Any]:
    """The further checkpoints of ``committee=[...]`` (files or run folders), each with the same evaluation
    settings as ``ckpt_path``'s (a committee averages probabilities of one image, so it must see one image)."""
    members = cfg.get("committee") or []
    if isinstance(members, str):
        raise ConfigError(f"committee={members!r} must be a list: committee=[run_a,run_b].")
    models = []
    for member in members:
        file, chosen_by = checkpoint_for(str(member))
        model, data_hp = load_classifier(file, ctx.device)
        if eval_settings(model, data_hp) != ctx.settings:
            raise ConfigError(f"committee: {file} was trained with other evaluation settings than ckpt_path's.")
        print_rank_zero(f"committee member: {file} ({chosen_by})")
        models.append(model)
    return models


@torch.inference_mode()
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (with ``committee``: the mean probabilities of several checkpoints) on the
    official test images or the validation split; write the report; return the metrics dict."""
    split = cfg.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}; allowed: {', '.join(SPLITS)}.")
    views = check_test_views(cfg.get("test_views", 1))
    ctx = eval_context(cfg, "test" if split == "test" else "validate")
    models = [ctx.model, *_committee(cfg, ctx)]
    dm = ctx.datamodule
    dataset, loader = (dm.val_set, dm.val_dataloader) if split == "val" else (dm.test_set, dm.test_dataloader)
    if views > 1:  # the dataset yields the image the 10 views are cut from
        dataset.transform = view_source(ctx.size, dm._transform_params())
        print_rank_zero(f"test views: {CROPS} crops (centre + 4 corners) + label-mapped flips")
    scores, wrong, labels, preds, confs = _score(models, loader(), ctx.device, ctx.size if views > 1 else None)
    cm = scores["confmat"]
    total, correct = int(cm.sum()), int(cm.diag().sum())
    if total == 0:
        raise UserError(f"No {split} image could be evaluated under {cfg.data.data_dir}.")
    test_info = describe_test_set(r.label for r in dataset.records)
    if split == "val":
        test_info["note"] = f"the validation split the run held out ({len(dataset.records):,} training-set images)"
    macro = {name: float(scores[f"{name}_macro"]) for name in SCORES}
    rows = _per_class_rows(scores, cm)
    footer = {"name": "**macro average**", "support": total, "correct": correct, **macro}
    write_table(rows, ctx.out_dir, "per_class", footer=footer)
    save_figure(confusion_figure(cm), ctx.out_dir / "confusion_matrix.png")
    save_figure(misclassified_figure(wrong, MAX_MISCLASSIFIED), ctx.out_dir / "misclassified.png")
    errors = [
        _error_row(dataset.records[i].path, dm.index.root, int(labels[i]), int(preds[i]), float(confs[i]))
        for i in torch.nonzero(preds != labels).flatten().tolist()
    ]
    write_table(errors, ctx.out_dir, "misclassified", columns=ERROR_COLUMNS)
    metrics = {
        f"{split}/acc": correct / total,
        **interval_metrics(f"{split}/acc", correct, total),
        **_track_metrics(split, [r.track for r in dataset.records], (preds == labels).tolist()),
        f"{split}/acc_torchmetrics": float(scores["acc_micro"]),
        **{f"{split}/{name}_macro": value for name, value in macro.items()},
        "split": split,
        "correct": correct,
        "num_images": total,
        "test_views": views,
        "ckpt_path": ctx.ckpt_path,
        "ckpt_chosen_by": ctx.chosen_by,
        "committee": [str(m) for m in cfg.get("committee") or []],
        "test_set": test_info,
        "data_dir": str(dm.index.root),
        "settings": {**ctx.settings, "image_size": ctx.size},
        "per_class": rows,
    }
    _finish(ctx, metrics, cm, macro)
    return metrics


def _score(
    models: list[Any], loader: Any, device: str, view_size: int | None
) -> tuple[dict[str, Any], list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the (unshuffled) loader: (torchmetrics scores, the first misclassified images, and per image
    its label, predicted class and confidence). Several models: their probabilities averaged (a committee); with
    ``view_size`` each model's 10-view probabilities."""
    n = int(models[0].hparams.num_classes)
    metrics: dict[str, Any] = {
        "acc_micro": MulticlassAccuracy(num_classes=n, average="micro"),
        "confmat": MulticlassConfusionMatrix(num_classes=n),
    }
    for name, kind in SCORES.items():
        metrics[name] = kind(num_classes=n, average=None)
        metrics[f"{name}_macro"] = kind(num_classes=n, average="macro")
    collection = MetricCollection(metrics).to(device)
    wrong: list[tuple[np.ndarray, int, int, float]] = []
    outcomes: list[torch.Tensor] = []
    for images, labels in tqdm(loader, desc="evaluate", unit="batch", disable=None, file=sys.stderr):
        images, labels = images.to(device), labels.to(device)
        probs = torch.stack(
            [
                ten_view_probabilities(m, images, view_size) if view_size else m(images).float().softmax(dim=-1)
                for m in models
            ]
        ).mean(dim=0)
        collection.update(probs, labels)
        conf, pred = probs.max(dim=-1)
        for i in torch.nonzero(pred != labels).flatten().tolist()[: MAX_MISCLASSIFIED - len(wrong)]:
            wrong.append((images[i].cpu().numpy(), int(labels[i]), int(pred[i]), float(conf[i])))
        outcomes.append(torch.stack([labels.double(), pred.double(), conf.double()], dim=1).cpu())
    labels_, preds, confs = torch.cat(outcomes).T if outcomes else torch.empty(3, 0)
    return {k: v.cpu() for k, v in collection.compute().items()}, wrong, labels_.long(), preds.long(), confs


def _per_class_rows(scores: Mapping[str, torch.Tensor], confmat: torch.Tensor) -> list[dict[str, Any]]:
    """One row per class, worst accuracy first (classes without images last, with no scores), ties by class id;
    support and correct are the confusion matrix's row sums and diagonal."""
    support, diag = confmat.sum(dim=1), confmat.diag()
    rows = []
    for c in range(len(support)):
        n = int(support[c])
        row: dict[str, Any] = {"class_id": c, "name": class_name(c), "support": n, "correct": int(diag[c])}
        rows.append(row | {name: float(scores[name][c]) if n else float("nan") for name in SCORES})
    return sorted(rows, key=lambda r: (r["support"] == 0, r["accuracy"] if r["support"] else 0.0, r["class_id"]))


def _error_row(path: str, root: Path, true: int, guess: int, confidence: float) -> dict[str, Any]:
    """One misclassified.csv row: the file relative to the data folder, true and predicted class, confidence."""
    file = Path(path)
    name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()
    return dict(
        zip(ERROR_COLUMNS, (name, true, class_name(true), guess, class_name(guess), f"{confidence:.4f}"), strict=True)
    )


def _track_metrics(split: str, tracks: list[str | None], hits: list[bool]) -> dict[str, Any]:
    """The track-bootstrap interval of the accuracy, where every image has a track (the validation split)."""
    if not tracks or None in tracks:
        return {}
    counts: dict[str, tuple[int, int]] = {}
    for track, hit in zip(map(str, tracks), hits, strict=True):
        c, n = counts.get(track, (0, 0))
        counts[track] = (c + int(hit), n + 1)
    low, high = track_interval(counts)
    return {f"{split}/acc_track_ci_low": low, f"{split}/acc_track_ci_high": high, "tracks": len(counts)}


def _finish(ctx: EvalContext, metrics: dict[str, Any], cm: torch.Tensor, macro: dict[str, float]) -> None:
    """<split>/acc, the macro averages and per-class precision/recall/F1 to every logger, the confusion matrix
    to TensorBoard; then metrics.json, and the summary printed."""
    split, total, out_dir = metrics["split"], metrics["num_images"], ctx.out_dir
    scalars = {f"{split}/acc": metrics[f"{split}/acc"], **{f"{split}/{k}_macro": v for k, v in macro.items()}}
    for r in metrics["per_class"]:
        if r["support"]:
            scalars |= {f"{split}_class_{k}/{r['class_id']:02d}": r[k] for k in SCORES if k != "accuracy"}
    ctx.loggers.scalars(scalars, step=0)
    ctx.loggers.figure(f"{split}/confusion_matrix", lambda: confusion_figure(cm))
    ctx.finish(metrics)
    print_rank_zero(f"test set: {metrics['test_set']['note']}")
    print_rank_zero(f"{split}/acc: {format_accuracy(metrics['correct'], total)}")
    if "tracks" in metrics:
        low, high = metrics[f"{split}/acc_track_ci_low"], metrics[f"{split}/acc_track_ci_high"]
        print_rank_zero(f"  95% track-bootstrap interval ({metrics['tracks']} tracks): {low:.4f}-{high:.4f}")
    print_rank_zero("macro averages: " + ", ".join(f"{k} {v:.4f}" for k, v in macro.items()))
    print_rank_zero("worst classes:")
    for line in (out_dir / "per_class.md").read_text().splitlines()[:12]:
        print_rank_zero(line)
    print_rank_zero(f"report: {out_dir}")


def _test_accuracy(cfg: DictConfig) -> float:
    """Evaluate and return the accuracy (for a sweeper)."""
    metrics = evaluate(cfg)
    return float(metrics[f"{metrics['split']}/acc"])


main = hydra_entry_point("eval", _test_accuracy)

if __name__ == "__main__":
    main()

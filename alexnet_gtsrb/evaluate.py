"""Entry point: ``python -m alexnet_gtsrb.evaluate ckpt_path=PATH [data.data_dir=DIR] [tta=true]``.

Evaluates a trained checkpoint on the official GTSRB test images and writes a report into the run folder
(``${paths.output_dir}``): ``metrics.json``, ``per_class.csv`` / ``per_class.md`` (worst classes first),
``confusion_matrix.png`` (row-normalised, 43x43), ``misclassified.png`` (up to 64 errors with true/predicted
names) and TensorBoard scalars/images under ``tensorboard/``.

Why a separate entry point: training tests once with the best checkpoint; this re-evaluates any checkpoint
later, with per-class numbers and pictures, without re-training. The evaluation pipeline (image size, preset,
ROI crop, mean/std) comes from the checkpoint itself, so a model is evaluated exactly as it was validated;
any ``data.*`` key given on the command line wins.

The helpers :func:`load_classifier` and :func:`eval_settings` are shared with :mod:`alexnet_gtsrb.predict`
and :mod:`alexnet_gtsrb.export`.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from alexnet_gtsrb.data.classes import FLIP_INVARIANT, MIRROR_PAIRS, class_name
from alexnet_gtsrb.data.transforms import build_transform
from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.module import GTSRBClassifier
from alexnet_gtsrb.utils import exit_on_user_error, print_rank_zero, resolve_ckpt_path

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED = 64
TTA_CROPS = 5


# -- checkpoint helpers (shared with predict/export) ----------------------------------------------------------
def load_classifier(ckpt_path: str | None, device: str = "cpu") -> tuple[GTSRBClassifier, dict[str, Any]]:
    """(model in eval mode on ``device``, the DataModule hyper-parameters saved in the checkpoint or {}).

    Lightning stores the DataModule's hparams next to the model's; they carry the preset, ROI crop and
    CLAHE settings the model was validated with. Checkpoints hold plain containers: ``weights_only=True``.
    """
    path = resolve_ckpt_path(ckpt_path)
    if path is None:
        raise ConfigError("ckpt_path is required: ckpt_path=path/to/last.ckpt (or a run folder).")
    try:  # one read: the model's and the DataModule's hparams and the weights all come from it
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        model = GTSRBClassifier(**raw["hyper_parameters"])
        model.load_state_dict(raw["state_dict"])
    except (RuntimeError, KeyError, EOFError, OSError) as exc:
        raise UserError(f"ckpt_path={path}: cannot load this checkpoint ({type(exc).__name__}: {exc}).") from exc
    data_hp = dict(raw.get("datamodule_hyper_parameters") or {})
    model = model.to(device).eval()
    return model, data_hp


def eval_settings(model: GTSRBClassifier, data_hp: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation pipeline of a checkpoint: image_size, augment (preset + CLAHE), roi_crop, mean, std.

    ``image_size`` comes from the network's hparams (the size the classifier head was built for); the rest
    from the saved DataModule hparams, falling back to the model's mean/std and the defaults.
    """
    hp = model.hparams
    image_size = int(hp.net.get("image_size") or data_hp.get("image_size") or 227)
    return {
        "image_size": image_size,
        "augment": dict(data_hp.get("augment") or {"preset": "none"}),
        "roi_crop": bool(data_hp.get("roi_crop", True)),
        "mean": [float(v) for v in hp.mean],
        "std": [float(v) for v in hp.std],
        "num_classes": int(hp.num_classes),
    }


def pick_device(name: str = "auto") -> str:
    """``auto`` -> cuda when available, else cpu; anything else is passed through."""
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


# -- test-time augmentation ---------------------------------------------------------------------------------
def _flip_source_index(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(source class per class for a flipped view, mask of classes that may use the flipped view).

    ``src[c]`` is the class whose flipped-view probability stands for class ``c``: its mirror twin for the
    mirror pairs, itself for flip-invariant classes; ``mask[c]`` is False for every other class.
    """
    src = torch.arange(num_classes)
    mask = torch.zeros(num_classes, dtype=torch.bool)
    for a, b in MIRROR_PAIRS:
        if a < num_classes and b < num_classes:
            src[a], src[b] = b, a
            mask[a] = mask[b] = True
    for c in FLIP_INVARIANT:
        if c < num_classes:
            mask[c] = True
    return src, mask


def five_crops(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Centre and four corner ``size``x``size`` crops of a uint8 (B, H, W, 3) batch (Krizhevsky et al. 2012)."""
    h, w = images.shape[1], images.shape[2]
    if h < size or w < size:
        raise ValueError(f"TTA: images of {h}x{w} are smaller than the crop size {size}")
    top, left = (h - size) // 2, (w - size) // 2
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return [images[:, y : y + size, x : x + size] for y, x in [(top, left), *corners]]


@torch.inference_mode()
def tta_probabilities(model: GTSRBClassifier, images: torch.Tensor, size: int) -> torch.Tensor:
    """Flip-safe TTA: softmax averaged over 5 crops, each with a label-mapped horizontal flip.

    The paper averages 10 views (5 crops and their flips); on GTSRB a flip changes the meaning of some
    signs, and at test time the class is unknown, so a flipped view is used only through the label mapping
    under which it is valid. Per crop, with ``p`` the softmax of the crop and ``p'`` that of its mirror image:

    * mirror-pair classes (19/20, 33/34, 36/37, 38/39): ``q[c] = p'[twin(c)]`` (a flipped "curve left" is a
      "curve right");
    * flip-invariant classes (11, 12, 13, 15, 17, 18, 22, 26, 30, 35): ``q[c] = p'[c]``;
    * every other class (digits, one-sided signs without a twin): ``q[c] = p[c]``; the flipped view says
      nothing valid about them;
    * ``q`` is renormalised to sum to 1, and the crop's distribution is ``(p + q) / 2``.

    The result is the mean over the 5 crops: ``(B, num_classes)`` probabilities. For a model and an image
    where only the un-flipped view counts this reduces to the paper's 5-crop average.
    """
    crops = five_crops(images, size)
    num_classes = int(model.hparams.num_classes)
    src, mask = _flip_source_index(num_classes)
    src, mask = src.to(images.device), mask.to(images.device)
    total = None
    for crop in crops:
        both = torch.cat([crop, crop.flip(2)])  # (2B, s, s, 3): the crop and its mirror image
        probs = model(both.contiguous()).float().softmax(dim=-1)
        p, p_flip = probs.chunk(2)
        q = torch.where(mask, p_flip[:, src], p)
        q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        view = (p + q) / 2
        total = view if total is None else total + view
    return total / len(crops)


def tta_transform(image_size: int, augment: Mapping[str, Any]) -> A.Compose:
    """The pipeline feeding TTA: the paper preset's evaluation pipeline (CLAHE if set, resize to 256/227 of
    the size) without its centre crop, so that the 5 crops are cut from the same enlarged image."""
    full = build_transform("paper", image_size, train=False, params=augment)
    return A.Compose(list(full.transforms)[:-1])


# -- reports ---------------------------------------------------------------------------------------------------
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


def confusion_figure(confmat: torch.Tensor) -> Any:
    """A matplotlib figure of the row-normalised confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confmat.float()
    rows = counts.sum(dim=1, keepdim=True)
    norm = torch.where(rows > 0, counts / rows.clamp_min(1), torch.zeros_like(counts)).numpy()
    n = norm.shape[0]
    fig, ax = plt.subplots(figsize=(12, 11))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(range(n), fontsize=6)
    ax.set_yticklabels([f"{c} {class_name(c)[:28]}" for c in range(n)], fontsize=6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (rows normalised to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def misclassified_figure(items: list[tuple[np.ndarray, int, int, float]]) -> Any:
    """A grid (up to 8x8) of misclassified images titled with true and predicted names and the probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 8
    rows = max(1, (len(items) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, true, pred, prob) in zip(axes.flat, items, strict=False):
        ax.imshow(image)
        ax.set_title(f"T: {class_name(true)[:24]}\nP: {class_name(pred)[:24]} ({prob:.2f})", fontsize=6)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"{len(items)} misclassified test images (first {MAX_MISCLASSIFIED} at most)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the evaluation -------------------------------------------------------------------------------------------
def _data_config(cfg: DictConfig, settings: Mapping[str, Any]) -> DictConfig:
    """cfg.data with every key left null (or augment left unset) filled from the checkpoint's settings."""
    data = cfg.data.copy()
    with open_dict(data):
        for key in ("image_size", "roi_crop", "mean", "std", "num_classes"):
            if data.get(key) is None:
                data[key] = settings[key]
        if OmegaConf.is_missing(data, "augment") or data.get("augment") is None:
            data.augment = dict(settings["augment"])
    return data


@torch.inference_mode()
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on the official test images; write the report; return the metrics dict."""
    device = pick_device(cfg.get("device", "auto"))
    model, data_hp = load_classifier(cfg.get("ckpt_path"), device)
    settings = eval_settings(model, data_hp)
    data_cfg = _data_config(cfg, settings)
    size = int(data_cfg.image_size)
    if size != settings["image_size"]:
        log.warning("data.image_size=%d differs from the checkpoint's %d.", size, settings["image_size"])
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(data_cfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    tta = bool(cfg.get("tta", False))
    if tta:
        datamodule.test_set.transform = tta_transform(size, datamodule.augment)
        print_rank_zero(f"tta: {TTA_CROPS} crops (centre + 4 corners) + label-mapped flips")

    num_classes = int(model.hparams.num_classes)
    acc_micro = MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
    acc_per_class = MulticlassAccuracy(num_classes=num_classes, average=None).to(device)
    confmat = MulticlassConfusionMatrix(num_classes=num_classes).to(device)
    wrong: list[tuple[np.ndarray, int, int, float]] = []
    skipped = 0
    for images, labels, n_skipped in datamodule.test_dataloader():
        skipped += int(n_skipped)
        if labels.numel() == 0:
            continue
        images, labels = images.to(device), labels.to(device)
        probs = tta_probabilities(model, images, size) if tta else model(images).float().softmax(dim=-1)
        for metric in (acc_micro, acc_per_class, confmat):
            metric.update(probs, labels)
        conf, pred = probs.max(dim=-1)
        for i in torch.nonzero(pred != labels).flatten().tolist():
            if len(wrong) < MAX_MISCLASSIFIED:
                wrong.append((images[i].cpu().numpy(), int(labels[i]), int(pred[i]), float(conf[i])))

    cm = confmat.compute().cpu()
    support = cm.sum(dim=1)
    total = int(support.sum())
    if total == 0:
        raise UserError(f"No test image could be evaluated under {data_cfg.data_dir}.")
    correct = int(cm.diag().sum())
    acc = float(acc_micro.compute())
    rows = per_class_rows(acc_per_class.compute().cpu(), cm)

    write_per_class(rows, out_dir)
    fig = confusion_figure(cm)
    _save_figure(fig, out_dir / "confusion_matrix.png")
    _save_figure(misclassified_figure(wrong), out_dir / "misclassified.png")
    metrics = {
        "test/acc": correct / total,
        "test/acc_torchmetrics": acc,
        "correct": correct,
        "num_images": total,
        "skipped_images": skipped,
        "tta": tta,
        "views_per_image": 2 * TTA_CROPS if tta else 1,
        "ckpt_path": str(resolve_ckpt_path(cfg.ckpt_path)),
        "data_dir": str(datamodule.index.root),
        "settings": {**settings, "image_size": size},
        "per_class": rows,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    _log_tensorboard(cfg, metrics["test/acc"], cm)

    print_rank_zero(f"test/acc: {metrics['test/acc']:.4f}  ({correct}/{total} test images)")
    print_rank_zero("worst classes:")
    for line in (out_dir / "per_class.md").read_text().splitlines()[:12]:
        print_rank_zero(line)
    print_rank_zero(f"report: {out_dir}")
    return metrics


def _log_tensorboard(cfg: DictConfig, acc: float, cm: torch.Tensor) -> None:
    """test/acc and the confusion-matrix figure to every TensorBoard logger of the logger group (if any)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    group = cfg.get("logger") or {}
    for lg_cfg in group.values():
        if not isinstance(lg_cfg, DictConfig) or "_target_" not in lg_cfg:
            continue
        lg = instantiate(lg_cfg)
        lg.log_metrics({"test/acc": acc}, step=0)
        if isinstance(lg, TensorBoardLogger):
            lg.experiment.add_figure("test/confusion_matrix", confusion_figure(cm), global_step=0, close=True)
        lg.finalize("success")


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """Compose conf/eval.yaml, evaluate, return test/acc (for a sweeper)."""
    return float(evaluate(cfg)["test/acc"])


if __name__ == "__main__":
    main()

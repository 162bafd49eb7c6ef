"""Entry point: ``python -m alexnet_gtsrb.robustness ckpt_path=PATH [data.data_dir=DIR] [suites=[...]]``.

How a trained checkpoint fails, on the official test images, in one command. Four suites (``suites``):

- ``corruptions``: accuracy under ten corruptions at severities 0-5 (ImageNet-C style, albumentations):
  ``corruptions.csv`` / ``.md``, the mean corruption accuracy and its relative drop from clean,
  ``corruption_examples.png`` (one test image under every corruption and severity);
- ``adversarial``: accuracy under L-infinity FGSM and PGD (captum) at epsilons in 1/255 units:
  ``adversarial.csv`` / ``.md``, ``adversarial_examples.png`` (clean and attacked images with predictions);
- ``calibration``: ECE and NLL before and after temperature scaling fitted on the validation split (never the
  test): ``calibration.json`` (read by ``predict calibration=PATH``), ``reliability.png``;
- ``gradcam``: Grad-CAM on conv5 for correctly and wrongly classified test images: ``gradcam.png``.

Everything lands in the run folder with ``metrics.json`` (every number and each suite's seconds) and as
TensorBoard scalars and figures (``corruption/<name>`` against severity, ``adversarial/<attack>`` against
epsilon, ``calibration/*``). Building blocks: :mod:`alexnet_gtsrb.evaluation`.
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("robustness", "alexnet-gtsrb-robustness", __name__ == "__main__")  # before torch is imported


import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.errors import ConfigError, UserError, int_setting
from alexnet_gtsrb.evaluation import calibration, corruptions
from alexnet_gtsrb.evaluation.intervals import format_accuracy, interval_metrics
from alexnet_gtsrb.evaluation.pixel_model import PixelModel, from_pixels, logits_of, preprocess_all, raw_test_images
from alexnet_gtsrb.inference import data_config, eval_settings, load_classifier, pick_device
from alexnet_gtsrb.loggers import LoggerGroup
from alexnet_gtsrb.plots import image_grid_figure, reliability_figure, save_figure
from alexnet_gtsrb.run_folder import checkpoint_for
from alexnet_gtsrb.utils.cli import hydra_entry_point, print_rank_zero
from alexnet_gtsrb.utils.files import atomic_write, write_table
from alexnet_gtsrb.utils.optional_deps import require_extra

log = logging.getLogger(__name__)

SUITES = ("corruptions", "adversarial", "calibration", "gradcam")
CAPTUM_SUITES = ("adversarial", "gradcam")  # these need the optional 'robustness' extra (captum)
#: PGD costs one forward and backward pass per step, image and epsilon; published evaluations use 7-100 steps
#: and the accuracy has settled long before 1000. Past it, a typo (pgd_steps=100000) would run for days.
MAX_PGD_STEPS = 1000


def _suites(value: Any) -> list[str]:
    items = [str(value)] if isinstance(value, str) else [str(v) for v in (value or [])]
    if "all" in items:
        return list(SUITES)
    unknown = [s for s in items if s not in SUITES]
    if unknown or not items:
        raise ConfigError(f"suites={items}: allowed: {', '.join(SUITES)} (any subset), or [all].")
    return items


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, ListConfig | list | tuple) else value


def _check_counts(cfg: DictConfig, suites: Sequence[str]) -> tuple[int, int | None]:
    """(batch_size, max_images), and the chosen suites' counts checked: each a whole number in its range, one
    line naming the key otherwise, before any model is loaded (``max(1, ...)`` and slicing hid 0 and negatives)."""
    if "adversarial" in suites:
        int_setting("adversarial.pgd_steps", cfg.adversarial.pgd_steps, 1, MAX_PGD_STEPS)
        int_setting("adversarial.num_examples", cfg.adversarial.num_examples, 0)
    if "gradcam" in suites:
        int_setting("gradcam.num_correct", cfg.gradcam.num_correct, 0)
        int_setting("gradcam.num_wrong", cfg.gradcam.num_wrong, 0)
    batch_size = int_setting("batch_size", cfg.batch_size, 1)
    return batch_size, int_setting("max_images", cfg.get("max_images"), 1, null="all test images")


def corruption_matrix(rows: list[dict[str, Any]], severities: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of (corruption, severity) -> one row per corruption, one column per severity, plus its mean."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["corruption"], {"corruption": r["corruption"]})[f"s{r['severity']}"] = r["accuracy"]
    for row in out.values():
        vals = [row[f"s{s}"] for s in severities if s > 0]
        row["mean"] = float(np.mean(vals)) if vals else float("nan")
    return list(out.values())


@dataclass
class Context:
    """What every suite works on: the checkpoint's model on pixels, the test images (raw and preprocessed), their
    labels and logits, the evaluation pipeline, the settings, the output folder and the loggers."""

    cfg: DictConfig
    pixel_model: PixelModel
    datamodule: Any
    preprocess: Any
    raw: list[np.ndarray]
    labels: np.ndarray
    clean: np.ndarray
    test_logits: torch.Tensor
    size: int
    seed: int
    batch_size: int
    device: str
    out_dir: Path
    loggers: LoggerGroup
    ckpt_path: str
    correct: int  # test images classified correctly without any corruption or attack

    @property
    def clean_acc(self) -> float:
        return self.correct / len(self.raw)


def _checked_settings(cfg: DictConfig) -> dict[str, Any]:
    """The chosen suites and every value they use, checked before any model is loaded (one line each)."""
    suites = _suites(_listed(cfg.get("suites", list(SUITES))))
    if captum_suites := [s for s in suites if s in CAPTUM_SUITES]:
        require_extra("captum", "robustness", f"suites=[{','.join(captum_suites)}]")
    names = corruptions.resolve_names(_listed(cfg.corruptions.names)) if "corruptions" in suites else []
    severities = corruptions.check_severities(_listed(cfg.corruptions.severities)) if names else []
    if names and not any(s > 0 for s in severities):  # the mean over severities 1-5 would be NaN
        raise ConfigError(f"corruptions.severities={severities}: include at least one of 1-5 (0 is the clean images).")
    batch_size, max_images = _check_counts(cfg, suites)
    if "adversarial" in suites:
        from alexnet_gtsrb.evaluation import adversarial

        adv = cfg.adversarial
        adversarial.check_settings(_listed(adv.attacks), _listed(adv.epsilons), adv.pgd_steps, adv.pgd_step_size)
    seed = int_setting("seed", cfg.seed, 0)
    return {"suites": suites, "names": names, "severities": severities, "batch_size": batch_size,
            "max_images": max_images, "seed": seed}  # fmt: skip


def robustness(cfg: DictConfig) -> dict[str, Any]:
    """Run the chosen suites on ``cfg.ckpt_path``; write tables, figures and metrics.json; return the metrics."""
    checked = _checked_settings(cfg)
    suites = checked["suites"]
    device = pick_device(cfg.get("device", "auto"))
    ckpt_file, chosen_by = checkpoint_for(cfg.get("ckpt_path"))
    model, data_hp = load_classifier(ckpt_file, device)
    print_rank_zero(f"checkpoint: {ckpt_file} ({chosen_by})")
    dcfg = data_config(cfg.data, eval_settings(model, data_hp), data_hp)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # written last: its presence marks a complete report
    datamodule = instantiate(dcfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("validate" if "calibration" in suites else "test")  # the split, no training pipeline
    preprocess = datamodule.test_set.transform  # the checkpoint's evaluation pipeline, as evaluate uses it
    pixel_model = PixelModel(model).to(device).eval()

    started = time.perf_counter()
    raw, labels = raw_test_images(datamodule.test_set, checked["max_images"])
    if not raw:
        raise UserError(f"No test image under {datamodule.index.root}: nothing to evaluate.")
    clean = preprocess_all(raw, preprocess)
    logits = logits_of(pixel_model, clean, checked["batch_size"], device)
    correct = int((logits.argmax(dim=-1) == torch.as_tensor(labels)).sum())
    ctx = Context(cfg, pixel_model, datamodule, preprocess, raw, labels, clean, logits, int(dcfg.image_size),
                  checked["seed"], checked["batch_size"], device, out_dir, LoggerGroup(cfg.get("logger")),
                  str(ckpt_file), correct)  # fmt: skip
    metrics: dict[str, Any] = {
        "ckpt_path": str(ckpt_file),
        "data_dir": str(datamodule.index.root),
        "num_images": len(raw),
        "image_size": ctx.size,
        "clean_accuracy": ctx.clean_acc,
        **interval_metrics("clean_accuracy", correct, len(raw)),
        "seconds": {"load": time.perf_counter() - started},
    }
    print_rank_zero(f"clean accuracy: {format_accuracy(correct, len(raw))} on test images ({ctx.size} px)")
    ctx.loggers.scalars({"robustness/clean_accuracy": ctx.clean_acc})
    runs = {
        "corruptions": lambda: _corruptions_suite(ctx, checked["names"], checked["severities"]),
        "adversarial": lambda: _adversarial_suite(ctx),
        "calibration": lambda: _calibration_suite(ctx),
        "gradcam": lambda: _gradcam_suite(ctx),
    }
    for suite in SUITES:
        if suite in suites and (suite != "corruptions" or checked["names"]):
            t0 = time.perf_counter()
            metrics[suite] = runs[suite]()
            metrics["seconds"][suite] = time.perf_counter() - t0

    metrics["seconds"]["total"] = time.perf_counter() - started
    ctx.loggers.close()
    with atomic_write(out_dir / "metrics.json", "w") as f:  # after every other output, never half-written
        f.write(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    print_rank_zero(f"robustness suites {', '.join(suites)} in {metrics['seconds']['total']:.0f} s; report: {out_dir}")
    return metrics


def _corruptions_suite(ctx: Context, names: list[str], severities: list[int]) -> dict[str, Any]:
    """Accuracy per corruption and severity: tables, the example grid, the summary."""
    before = bool(ctx.cfg.corruptions.before_preprocessing)
    rows = corruptions.corruption_table(ctx.pixel_model, ctx.raw, ctx.labels, names, severities, ctx.size,
                                        ctx.preprocess, ctx.seed, ctx.batch_size, ctx.device, before,
                                        print_rank_zero)  # fmt: skip
    summary = corruptions.summarize(rows, ctx.clean_acc)
    write_table(rows, ctx.out_dir, "corruptions", "# Accuracy per corruption and severity")
    write_table(
        corruption_matrix(rows, severities), ctx.out_dir, "corruption_matrix", "# Accuracy: corruption x severity"
    )
    grid = corruptions.example_grid(ctx.raw[0], names, ctx.size, ctx.preprocess, ctx.seed, before)
    cells = [[(img, f"severity {s}") for s, img in enumerate(row)] for row in grid]
    fig = lambda: image_grid_figure(cells, list(names), f"test image 0 ({class_name(int(ctx.labels[0]))})")  # noqa: E731
    save_figure(fig(), ctx.out_dir / "corruption_examples.png")
    ctx.loggers.figure("robustness/corruption_examples", fig)
    for r in rows:
        ctx.loggers.scalars({f"corruption/{r['corruption']}": r["accuracy"]}, step=int(r["severity"]))
    ctx.loggers.scalars({"corruption/mean_accuracy": summary["mean_corruption_accuracy"],
                         "corruption/relative_drop": summary["relative_drop"]})  # fmt: skip
    print_rank_zero(
        f"mean corruption accuracy {summary['mean_corruption_accuracy']:.4f} "
        f"(relative drop {summary['relative_drop']:.4f} from clean {ctx.clean_acc:.4f})"
    )
    return {**summary, "before_preprocessing": before, "rows": rows}


def _adversarial_suite(ctx: Context) -> dict[str, Any]:
    """Accuracy under FGSM and PGD at each epsilon, and a grid of clean and attacked images."""
    from alexnet_gtsrb.evaluation import adversarial

    adv = ctx.cfg.adversarial
    attacks, epsilons = list(_listed(adv.attacks)), [float(e) for e in _listed(adv.epsilons)]
    rows, examples = adversarial.adversarial_table(
        ctx.pixel_model, ctx.clean, ctx.labels, attacks, epsilons, int(adv.pgd_steps), float(adv.pgd_step_size),
        bool(adv.pgd_random_start), ctx.seed, ctx.batch_size, ctx.device, int(adv.num_examples), print_rank_zero,
    )  # fmt: skip
    write_table(rows, ctx.out_dir, "adversarial", "# Accuracy under L-infinity attacks (epsilon in 1/255)")
    pairs = zip(examples["clean"], examples["labels"], examples["clean_pred"], strict=True)
    cells = [[(img, f"T {int(t)} / P {int(p)}") for img, t, p in pairs]]
    for attack in attacks:
        adv_images, preds = examples[attack]
        cells.append([(img, f"P {int(p)}") for img, p in zip(from_pixels(adv_images), preds, strict=True)])
    row_labels = ["clean"] + [f"{a} {examples['epsilon']:g}/255" for a in attacks]
    fig = lambda: image_grid_figure(cells, row_labels, "clean vs adversarial (T: true class, P: predicted)")  # noqa: E731
    save_figure(fig(), ctx.out_dir / "adversarial_examples.png")
    ctx.loggers.figure("robustness/adversarial_examples", fig)
    for r in rows:
        ctx.loggers.scalars({f"adversarial/{r['attack']}": r["accuracy"]}, step=int(round(r["epsilon_255"])))
    return {
        "rows": rows,
        "pgd_steps": int(adv.pgd_steps),
        "pgd_step_size": float(adv.pgd_step_size),
        "pgd_random_start": bool(adv.pgd_random_start),
        "library": "captum.robust",
        "loss": "per-image cross-entropy on logits (float64), zero_thresh 0",
    }


def _calibration_suite(ctx: Context) -> dict[str, Any]:
    """Temperature scaling fitted on the validation split, scored on the test images; calibration.json."""
    val_raw, val_labels = raw_test_images(ctx.datamodule.val_set)
    if not val_raw:
        raise UserError("The validation split is empty: temperature scaling needs it (data.val_fraction > 0).")
    val_logits = logits_of(ctx.pixel_model, preprocess_all(val_raw, ctx.preprocess), ctx.batch_size, ctx.device)
    y_val, y_test = torch.as_tensor(val_labels), torch.as_tensor(ctx.labels)
    report = calibration.calibration_report(val_logits, y_val, ctx.test_logits, y_test)
    calibration.write_calibration(ctx.out_dir / "calibration.json", report, ctx.ckpt_path)
    t = report["temperature"]
    bins = (
        calibration.reliability_bins(ctx.test_logits, y_test),
        calibration.reliability_bins(ctx.test_logits, y_test, t),
    )
    fig = lambda: reliability_figure(bins[0], bins[1], {**report["test"], "temperature": t})  # noqa: E731
    save_figure(fig(), ctx.out_dir / "reliability.png")
    ctx.loggers.figure("robustness/reliability", fig)
    keys = ("ece", "ece_scaled", "nll", "nll_scaled")
    scalars = {f"calibration/{split}_{k}": report[split][k] for split in ("val", "test") for k in keys}
    ctx.loggers.scalars(scalars | {"calibration/temperature": t})
    test = report["test"]
    print_rank_zero(
        f"temperature {t:.4f} (fitted on {len(val_raw)} validation images): test ECE {test['ece']:.4f} -> "
        f"{test['ece_scaled']:.4f}, NLL {test['nll']:.4f} -> {test['nll_scaled']:.4f}"
    )
    return report


def _gradcam_suite(ctx: Context) -> dict[str, Any]:
    """Grad-CAM overlays of the first correctly and wrongly classified test images."""
    from alexnet_gtsrb.evaluation import explanations

    pred, labels, clean = ctx.test_logits.argmax(dim=-1).numpy(), ctx.labels, ctx.clean
    right = np.flatnonzero(pred == labels)[: int(ctx.cfg.gradcam.num_correct)]
    wrong = np.flatnonzero(pred != labels)[: int(ctx.cfg.gradcam.num_wrong)]
    cells = []
    for title, idx in (("correct", right), ("wrong", wrong)):
        if len(idx) == 0:
            continue
        maps = explanations.gradcam(ctx.pixel_model, clean[idx], torch.as_tensor(pred[idx]), ctx.device)
        cells.append([(clean[i], f"T {labels[i]} / P {pred[i]}") for i in idx])
        cells.append(
            [(explanations.overlay(clean[i], m), f"{title}: P {pred[i]}") for i, m in zip(idx, maps, strict=True)]
        )
    row_labels = [lab for t in ("correct", "wrong") for lab in (t, "Grad-CAM")][: len(cells)]
    fig = lambda: image_grid_figure(cells, row_labels, "Grad-CAM on conv5 for the predicted class")  # noqa: E731
    save_figure(fig(), ctx.out_dir / "gradcam.png")
    ctx.loggers.figure("robustness/gradcam", fig)
    return {"correct": right.tolist(), "wrong": wrong.tolist(), "layer": explanations.LAYER_DESCRIPTION}


def _clean_accuracy(cfg: DictConfig) -> float:
    return float(robustness(cfg)["clean_accuracy"])


main = hydra_entry_point("robustness", _clean_accuracy)

if __name__ == "__main__":
    main()

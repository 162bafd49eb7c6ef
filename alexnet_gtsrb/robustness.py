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

import csv
import json
import logging
import time
from collections.abc import Sequence
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
from alexnet_gtsrb.evaluation.pixels import PixelModel, from_pixels, logits_of, preprocess_all, raw_test_images
from alexnet_gtsrb.inference import data_config, eval_settings, load_classifier, pick_device
from alexnet_gtsrb.loggers import LoggerGroup
from alexnet_gtsrb.plots import image_grid_figure, reliability_figure, save_figure
from alexnet_gtsrb.run_folder import checkpoint_for
from alexnet_gtsrb.utils.cli import hydra_entry_point, print_rank_zero
from alexnet_gtsrb.utils.extras import require_extra
from alexnet_gtsrb.utils.files import atomic_write

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


def write_table(rows: list[dict[str, Any]], out_dir: Path, stem: str, title: str) -> None:
    """``<stem>.csv`` and ``<stem>.md`` of the same rows."""
    keys = list(rows[0]) if rows else []
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")


def corruption_matrix(rows: list[dict[str, Any]], severities: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of (corruption, severity) -> one row per corruption, one column per severity, plus its mean."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["corruption"], {"corruption": r["corruption"]})[f"s{r['severity']}"] = r["accuracy"]
    for row in out.values():
        vals = [row[f"s{s}"] for s in severities if s > 0]
        row["mean"] = float(np.mean(vals)) if vals else float("nan")
    return list(out.values())


def robustness(cfg: DictConfig) -> dict[str, Any]:
    """Run the chosen suites on ``cfg.ckpt_path``; write tables, figures and metrics.json; return the metrics."""
    suites = _suites(_listed(cfg.get("suites", list(SUITES))))
    if captum_suites := [s for s in suites if s in CAPTUM_SUITES]:
        require_extra("captum", "robustness", f"suites=[{','.join(captum_suites)}]")
        from alexnet_gtsrb.evaluation import adversarial, explanations
    names = corruptions.resolve_names(_listed(cfg.corruptions.names)) if "corruptions" in suites else []
    severities = corruptions.check_severities(_listed(cfg.corruptions.severities)) if names else []
    if names and not any(s > 0 for s in severities):  # the mean over severities 1-5 would be NaN
        raise ConfigError(f"corruptions.severities={severities}: include at least one of 1-5 (0 is the clean images).")
    adv = cfg.adversarial
    batch_size, max_images = _check_counts(cfg, suites)
    if "adversarial" in suites:
        adversarial.check_settings(_listed(adv.attacks), _listed(adv.epsilons), adv.pgd_steps, adv.pgd_step_size)
    seed = int_setting("seed", cfg.seed, 0)

    device = pick_device(cfg.get("device", "auto"))
    ckpt_file, chosen_by = checkpoint_for(cfg.get("ckpt_path"))
    model, data_hp = load_classifier(ckpt_file, device)
    print_rank_zero(f"checkpoint: {ckpt_file} ({chosen_by})")
    settings = eval_settings(model, data_hp)
    dcfg = data_config(cfg.data, settings, data_hp)
    size = int(dcfg.image_size)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # written last: its presence marks a complete report
    datamodule = instantiate(dcfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("validate" if "calibration" in suites else "test")  # the split, no training pipeline
    preprocess = datamodule.test_set.transform  # the checkpoint's evaluation pipeline, as evaluate uses it
    pixel_model = PixelModel(model).to(device).eval()
    loggers = LoggerGroup(cfg.get("logger"))

    started = time.perf_counter()
    raw, labels = raw_test_images(datamodule.test_set, max_images)
    if not raw:
        raise UserError(f"No test image under {datamodule.index.root}: nothing to evaluate.")
    clean = preprocess_all(raw, preprocess)
    test_logits = logits_of(pixel_model, clean, batch_size, device)
    clean_correct = int((test_logits.argmax(dim=-1) == torch.as_tensor(labels)).sum())
    clean_acc = clean_correct / len(raw)
    metrics: dict[str, Any] = {
        "ckpt_path": str(ckpt_file),
        "data_dir": str(datamodule.index.root),
        "num_images": len(raw),
        "image_size": size,
        "clean_accuracy": clean_acc,
        **interval_metrics("clean_accuracy", clean_correct, len(raw)),
        "seconds": {"load": time.perf_counter() - started},
    }
    print_rank_zero(f"clean accuracy: {format_accuracy(clean_correct, len(raw))} on test images ({size} px)")
    loggers.scalars({"robustness/clean_accuracy": clean_acc})

    if names:
        t0 = time.perf_counter()
        before = bool(cfg.corruptions.before_preprocessing)
        rows = corruptions.corruption_table(
            pixel_model,
            raw,
            labels,
            names,
            severities,
            size,
            preprocess,
            seed,
            batch_size,
            device,
            before,
            print_rank_zero,
        )
        summary = corruptions.summarize(rows, clean_acc)
        matrix = corruption_matrix(rows, severities)
        write_table(rows, out_dir, "corruptions", "Accuracy per corruption and severity")
        write_table(matrix, out_dir, "corruption_matrix", "Accuracy: corruption x severity")
        grid = corruptions.example_grid(raw[0], names, size, preprocess, seed, before)
        cells = [[(img, f"severity {s}") for s, img in enumerate(row)] for row in grid]
        fig = lambda: image_grid_figure(cells, list(names), f"test image 0 ({class_name(int(labels[0]))})")  # noqa: E731
        save_figure(fig(), out_dir / "corruption_examples.png")
        loggers.figure("robustness/corruption_examples", fig)
        for name in names:
            for r in (r for r in rows if r["corruption"] == name):
                loggers.scalars({f"corruption/{name}": r["accuracy"]}, step=int(r["severity"]))
        loggers.scalars(
            {
                "corruption/mean_accuracy": summary["mean_corruption_accuracy"],
                "corruption/relative_drop": summary["relative_drop"],
            }
        )
        metrics["corruptions"] = {**summary, "before_preprocessing": before, "rows": rows}
        metrics["seconds"]["corruptions"] = time.perf_counter() - t0
        print_rank_zero(
            f"mean corruption accuracy {summary['mean_corruption_accuracy']:.4f} "
            f"(relative drop {summary['relative_drop']:.4f} from clean {clean_acc:.4f})"
        )

    if "adversarial" in suites:
        t0 = time.perf_counter()
        attacks, epsilons = list(_listed(adv.attacks)), [float(e) for e in _listed(adv.epsilons)]
        rows, examples = adversarial.adversarial_table(
            pixel_model,
            clean,
            labels,
            attacks,
            epsilons,
            int(adv.pgd_steps),
            float(adv.pgd_step_size),
            bool(adv.pgd_random_start),
            seed,
            batch_size,
            device,
            int(adv.num_examples),
            print_rank_zero,
        )
        write_table(rows, out_dir, "adversarial", "Accuracy under L-infinity attacks (epsilon in 1/255)")
        cells = [
            [
                (img, f"T {int(t)} / P {int(p)}")
                for img, t, p in zip(examples["clean"], examples["labels"], examples["clean_pred"], strict=True)
            ]
        ]
        for attack in attacks:
            adv_images, preds = examples[attack]
            cells.append([(img, f"P {int(p)}") for img, p in zip(from_pixels(adv_images), preds, strict=True)])
        row_labels = ["clean"] + [f"{a} {examples['epsilon']:g}/255" for a in attacks]
        fig = lambda: image_grid_figure(cells, row_labels, "clean vs adversarial (T: true class, P: predicted)")  # noqa: E731
        save_figure(fig(), out_dir / "adversarial_examples.png")
        loggers.figure("robustness/adversarial_examples", fig)
        for r in rows:
            loggers.scalars({f"adversarial/{r['attack']}": r["accuracy"]}, step=int(round(r["epsilon_255"])))
        metrics["adversarial"] = {
            "rows": rows,
            "pgd_steps": int(adv.pgd_steps),
            "pgd_step_size": float(adv.pgd_step_size),
            "pgd_random_start": bool(adv.pgd_random_start),
            "library": "captum.robust",
            "loss": "per-image cross-entropy on logits (float64), zero_thresh 0",
        }
        metrics["seconds"]["adversarial"] = time.perf_counter() - t0

    if "calibration" in suites:
        t0 = time.perf_counter()
        val_raw, val_labels = raw_test_images(datamodule.val_set)
        if not val_raw:
            raise UserError("The validation split is empty: temperature scaling needs it (data.val_fraction > 0).")
        val_logits = logits_of(pixel_model, preprocess_all(val_raw, preprocess), batch_size, device)
        y_val, y_test = torch.as_tensor(val_labels), torch.as_tensor(labels)
        report = calibration.calibration_report(val_logits, y_val, test_logits, y_test)
        calibration.write_calibration(out_dir / "calibration.json", report, metrics["ckpt_path"])
        t = report["temperature"]
        bins = calibration.reliability_bins(test_logits, y_test), calibration.reliability_bins(test_logits, y_test, t)
        fig = lambda: reliability_figure(bins[0], bins[1], {**report["test"], "temperature": t})  # noqa: E731
        save_figure(fig(), out_dir / "reliability.png")
        loggers.figure("robustness/reliability", fig)
        loggers.scalars(
            {
                f"calibration/{split}_{k}": report[split][k]
                for split in ("val", "test")
                for k in ("ece", "ece_scaled", "nll", "nll_scaled")
            }
            | {"calibration/temperature": t}
        )
        metrics["calibration"] = report
        metrics["seconds"]["calibration"] = time.perf_counter() - t0
        test = report["test"]
        print_rank_zero(
            f"temperature {t:.4f} (fitted on {len(val_raw)} validation images): test ECE {test['ece']:.4f} -> "
            f"{test['ece_scaled']:.4f}, NLL {test['nll']:.4f} -> {test['nll_scaled']:.4f}"
        )

    if "gradcam" in suites:
        t0 = time.perf_counter()
        pred = test_logits.argmax(dim=-1).numpy()
        right = np.flatnonzero(pred == labels)[: int(cfg.gradcam.num_correct)]
        wrong = np.flatnonzero(pred != labels)[: int(cfg.gradcam.num_wrong)]
        cells = []
        for title, idx in (("correct", right), ("wrong", wrong)):
            if len(idx) == 0:
                continue
            maps = explanations.gradcam(pixel_model, clean[idx], torch.as_tensor(pred[idx]), device)
            cells.append([(clean[i], f"T {labels[i]} / P {pred[i]}") for i in idx])
            cells.append(
                [(explanations.overlay(clean[i], m), f"{title}: P {pred[i]}") for i, m in zip(idx, maps, strict=True)]
            )
        row_labels = [lab for t in ("correct", "wrong") for lab in (t, "Grad-CAM")][: len(cells)]
        fig = lambda: image_grid_figure(cells, row_labels, "Grad-CAM on conv5 for the predicted class")  # noqa: E731
        save_figure(fig(), out_dir / "gradcam.png")
        loggers.figure("robustness/gradcam", fig)
        metrics["gradcam"] = {
            "correct": right.tolist(),
            "wrong": wrong.tolist(),
            "layer": explanations.LAYER_DESCRIPTION,
        }
        metrics["seconds"]["gradcam"] = time.perf_counter() - t0

    metrics["seconds"]["total"] = time.perf_counter() - started
    loggers.close()
    with atomic_write(out_dir / "metrics.json", "w") as f:  # after every other output, never half-written
        f.write(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    print_rank_zero(f"robustness suites {', '.join(suites)} in {metrics['seconds']['total']:.0f} s; report: {out_dir}")
    return metrics


def _clean_accuracy(cfg: DictConfig) -> float:
    return float(robustness(cfg)["clean_accuracy"])


main = hydra_entry_point("robustness", _clean_accuracy)

if __name__ == "__main__":
    main()

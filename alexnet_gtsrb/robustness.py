"""Entry point: ``python -m alexnet_gtsrb.robustness ckpt_path=PATH [data.data_dir=DIR] [suites=[...]]``.

How a trained checkpoint fails, on the official test images, in one command; each suite (``suites``) is a
function of :class:`Run` writing into the run folder (with ``metrics.json``: every number and each suite's
seconds) and to the loggers:

- ``corruptions``: ten corruptions at severities 0-5 (ImageNet-C style): ``corruptions.csv``,
  ``corruption_matrix.csv`` (with ``.md``), ``corruption_examples.png``, ``corruption/<name>`` against severity;
- ``adversarial``: L-infinity FGSM and PGD (captum) at epsilons in 1/255 units: ``adversarial.csv`` / ``.md``,
  ``adversarial_examples.png``, ``adversarial/<attack>`` against epsilon;
- ``calibration``: ECE and NLL before and after temperature scaling fitted on the validation split (never the
  test): ``calibration.json`` (read by ``predict calibration=PATH``), ``reliability.png``, ``calibration/*``;
- ``gradcam``: Grad-CAM on conv5 for correctly and wrongly classified test images: ``gradcam.png``.
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("robustness", "alexnet-gtsrb-robustness", __name__ == "__main__")  # before torch is imported

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.errors import ConfigError, UserError, int_setting
from alexnet_gtsrb.evaluation import calibration, corruptions
from alexnet_gtsrb.evaluation.intervals import format_accuracy, interval_metrics
from alexnet_gtsrb.evaluation.pixel_model import PixelModel, logits_of, preprocess_all, raw_test_images
from alexnet_gtsrb.inference import EvalContext, eval_context
from alexnet_gtsrb.plots import image_grid_figure, reliability_figure, save_figure
from alexnet_gtsrb.utils.cli import hydra_entry_point, print_rank_zero
from alexnet_gtsrb.utils.files import write_table
from alexnet_gtsrb.utils.optional_deps import require_extra

SUITES = ("corruptions", "adversarial", "calibration", "gradcam")
CAPTUM_SUITES = ("adversarial", "gradcam")  # these need the optional 'robustness' extra (captum)
#: PGD costs one forward and backward pass per step, image and epsilon; published evaluations use 7-100 steps
#: and the accuracy has settled long before 1000. Past it, a typo (pgd_steps=100000) would run for days.
MAX_PGD_STEPS = 1000


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, ListConfig | list | tuple) else value


def _checked_settings(cfg: DictConfig) -> dict[str, Any]:
    """The chosen suites and every value they use, checked before any model is loaded: each a one-line
    ConfigError naming the key (``max(1, ...)`` and slicing once hid 0 and negatives)."""
    value = cfg.get("suites", list(SUITES))
    items = [str(value)] if isinstance(value, str) else [str(v) for v in (_listed(value) or [])]
    suites = list(SUITES) if "all" in items else items
    if not items or any(s not in SUITES for s in suites):
        raise ConfigError(f"suites={items}: allowed: {', '.join(SUITES)} (any subset), or [all].")
    if captum_suites := [s for s in suites if s in CAPTUM_SUITES]:
        require_extra("captum", "robustness", f"suites=[{','.join(captum_suites)}]")
    names = corruptions.resolve_names(_listed(cfg.corruptions.names)) if "corruptions" in suites else []
    severities = corruptions.check_severities(_listed(cfg.corruptions.severities)) if names else []
    if names and not any(s > 0 for s in severities):  # the mean over severities 1-5 would be NaN
        raise ConfigError(f"corruptions.severities={severities}: include at least one of 1-5 (0 is the clean images).")
    if "adversarial" in suites:
        from alexnet_gtsrb.evaluation import adversarial

        adv = cfg.adversarial
        int_setting("adversarial.pgd_steps", adv.pgd_steps, 1, MAX_PGD_STEPS)
        int_setting("adversarial.num_examples", adv.num_examples, 0)
        adversarial.check_settings(_listed(adv.attacks), _listed(adv.epsilons), adv.pgd_steps, adv.pgd_step_size)
    for key in ("num_correct", "num_wrong") if "gradcam" in suites else ():
        int_setting(f"gradcam.{key}", cfg.gradcam[key], 0)
    batch_size = int_setting("batch_size", cfg.batch_size, 1)
    max_images = int_setting("max_images", cfg.get("max_images"), 1, null="all test images")
    seed = int_setting("seed", cfg.seed, 0)
    return dict(
        suites=suites, names=names, severities=severities, batch_size=batch_size, max_images=max_images, seed=seed
    )


@dataclass
class Run:
    """What every suite works on: the evaluation context, the config and its checked settings, the checkpoint's
    model on pixels and evaluation pipeline, and the test images (decoded and ROI-cropped; preprocessed), their
    labels, clean logits and how many of them are right."""

    ctx: EvalContext
    cfg: DictConfig
    checked: dict[str, Any]
    pixel_model: PixelModel
    preprocess: Any
    raw: list[np.ndarray]
    labels: np.ndarray
    clean: np.ndarray
    logits: torch.Tensor
    correct: int

    @property
    def clean_acc(self) -> float:
        return self.correct / len(self.raw)

    def figure(self, name: str, fig: Callable[[], Any]) -> None:
        """``<name>.png`` in the run folder and ``robustness/<name>`` in TensorBoard."""
        save_figure(fig(), self.ctx.out_dir / f"{name}.png")
        self.ctx.loggers.figure(f"robustness/{name}", fig)


def robustness(cfg: DictConfig) -> dict[str, Any]:
    """Run the chosen suites on ``cfg.ckpt_path``; write tables, figures and metrics.json; return the metrics."""
    checked = _checked_settings(cfg)
    suites = checked["suites"]
    ctx = eval_context(cfg, "validate" if "calibration" in suites else "test")  # the split, no training pipeline
    preprocess = ctx.datamodule.test_set.transform  # the checkpoint's evaluation pipeline, as evaluate uses it
    pixel_model = PixelModel(ctx.model).to(ctx.device).eval()
    started = time.perf_counter()
    raw, labels = raw_test_images(ctx.datamodule.test_set, checked["max_images"])
    if not raw:
        raise UserError(f"No test image under {ctx.datamodule.index.root}: nothing to evaluate.")
    clean = preprocess_all(raw, preprocess)
    logits = logits_of(pixel_model, clean, checked["batch_size"], ctx.device)
    correct = int((logits.argmax(dim=-1) == torch.as_tensor(labels)).sum())
    run = Run(ctx, cfg, checked, pixel_model, preprocess, raw, labels, clean, logits, correct)
    metrics: dict[str, Any] = {
        "ckpt_path": ctx.ckpt_path,
        "data_dir": str(ctx.datamodule.index.root),
        "num_images": len(raw),
        "image_size": ctx.size,
        "clean_accuracy": run.clean_acc,
        **interval_metrics("clean_accuracy", run.correct, len(raw)),
        "seconds": {"load": time.perf_counter() - started},
    }
    print_rank_zero(f"clean accuracy: {format_accuracy(run.correct, len(raw))} on test images ({ctx.size} px)")
    ctx.loggers.scalars({"robustness/clean_accuracy": run.clean_acc})
    for suite, function in SUITE_FUNCTIONS.items():
        if suite in suites:
            t0 = time.perf_counter()
            metrics[suite] = function(run)
            metrics["seconds"][suite] = time.perf_counter() - t0
    metrics["seconds"]["total"] = time.perf_counter() - started
    ctx.finish(metrics)
    print_rank_zero(
        f"robustness suites {', '.join(suites)} in {metrics['seconds']['total']:.0f} s; report: {ctx.out_dir}"
    )
    return metrics


def corruptions_suite(run: Run) -> dict[str, Any]:
    """Accuracy per corruption and severity, each drawn from its own seed (a row does not depend on the others):
    tables, the example grid, the summary."""
    ctx, names, seed = run.ctx, run.checked["names"], run.checked["seed"]
    before = bool(run.cfg.corruptions.before_preprocessing)

    def corrupt(images: list[np.ndarray], name: str, severity: int) -> np.ndarray:
        condition = corruptions.condition_seed(seed, name, severity)
        return corruptions.corrupted_inputs(images, name, severity, ctx.size, run.preprocess, condition, before)

    y, rows = torch.as_tensor(run.labels), []
    for name in names:
        for severity in run.checked["severities"]:
            pred = logits_of(run.pixel_model, corrupt(run.raw, name, severity), run.checked["batch_size"], ctx.device)
            correct = int((pred.argmax(dim=-1) == y).sum())
            rows.append({"corruption": name, "severity": severity, "correct": correct, "accuracy": correct / len(y)})
            print_rank_zero(f"{name} severity {severity}: {correct / len(y):.4f}")
            ctx.loggers.scalars({f"corruption/{name}": correct / len(y)}, step=severity)
    write_table(rows, ctx.out_dir, "corruptions", "# Accuracy per corruption and severity")
    matrix: dict[str, dict[str, Any]] = {}
    for r in rows:
        matrix.setdefault(r["corruption"], {"corruption": r["corruption"]})[f"s{r['severity']}"] = r["accuracy"]
    # the mean over severities 1-5, per corruption and of those means, and its drop relative to the clean accuracy
    hits = {n: [r["accuracy"] for r in rows if r["corruption"] == n and r["severity"] > 0] for n in matrix}
    per = {n: float(np.mean(accuracies)) for n, accuracies in hits.items()}
    mean, clean = float(np.mean(list(per.values()))), run.clean_acc
    drop = (clean - mean) / clean if clean > 0 else float("nan")
    summary = {"clean_accuracy": clean, "mean_corruption_accuracy": mean, "relative_drop": drop, "per_corruption": per}
    matrix_rows = [m | {"mean": per[m["corruption"]]} for m in matrix.values()]
    write_table(matrix_rows, ctx.out_dir, "corruption_matrix", "# Accuracy: corruption x severity")
    severities = (0, *corruptions.SEVERITIES)  # one image as the network sees it, under every severity
    cells = [[(corrupt(run.raw[:1], name, s)[0], f"severity {s}") for s in severities] for name in names]
    title = f"test image 0 ({class_name(int(run.labels[0]))})"
    run.figure("corruption_examples", lambda: image_grid_figure(cells, list(names), title))
    ctx.loggers.scalars({"corruption/mean_accuracy": mean, "corruption/relative_drop": drop})
    print_rank_zero(f"mean corruption accuracy {mean:.4f} (relative drop {drop:.4f} from clean {clean:.4f})")
    return {**summary, "before_preprocessing": before, "rows": rows}


def adversarial_suite(run: Run) -> dict[str, Any]:
    """Accuracy under FGSM and PGD at each epsilon, and a grid of clean and attacked images."""
    from alexnet_gtsrb.evaluation import adversarial

    adv, ctx = run.cfg.adversarial, run.ctx
    attacks, epsilons = list(_listed(adv.attacks)), [float(e) for e in _listed(adv.epsilons)]
    steps, step_size, random_start = int(adv.pgd_steps), float(adv.pgd_step_size), bool(adv.pgd_random_start)
    rows, examples = adversarial.adversarial_table(
        run.pixel_model,
        run.clean,
        run.labels,
        attacks,
        epsilons,
        steps,
        step_size,
        random_start,
        run.checked["seed"],
        run.checked["batch_size"],
        ctx.device,
        int(adv.num_examples),
        print_rank_zero,
    )
    write_table(rows, ctx.out_dir, "adversarial", "# Accuracy under L-infinity attacks (epsilon in 1/255)")
    pairs = zip(examples["clean"], examples["labels"], examples["clean_pred"], strict=True)
    cells = [[(img, f"T {int(t)} / P {int(p)}") for img, t, p in pairs]]
    for attack in attacks:
        adv_images, preds = examples[attack]
        cells.append([(img, f"P {int(p)}") for img, p in zip(adv_images, preds, strict=True)])
    row_labels = ["clean"] + [f"{a} {examples['epsilon']:g}/255" for a in attacks]
    title = "clean vs adversarial (T: true class, P: predicted)"
    run.figure("adversarial_examples", lambda: image_grid_figure(cells, row_labels, title))
    for r in rows:
        ctx.loggers.scalars({f"adversarial/{r['attack']}": r["accuracy"]}, step=int(round(r["epsilon_255"])))
    loss = "per-image cross-entropy on logits (float64), zero_thresh 0"
    pgd = {"pgd_steps": steps, "pgd_step_size": step_size, "pgd_random_start": random_start}
    return {"rows": rows, **pgd, "library": "captum.robust", "loss": loss}


def calibration_suite(run: Run) -> dict[str, Any]:
    """Temperature scaling fitted on the validation split, scored on the test images; calibration.json."""
    ctx = run.ctx
    val_raw, val_labels = raw_test_images(ctx.datamodule.val_set)
    if not val_raw:
        raise UserError("The validation split is empty: temperature scaling needs it (data.val_fraction > 0).")
    val_inputs = preprocess_all(val_raw, run.preprocess)
    val_logits = logits_of(run.pixel_model, val_inputs, run.checked["batch_size"], ctx.device)
    y_val, y_test = torch.as_tensor(val_labels), torch.as_tensor(run.labels)
    report = calibration.calibration_report(val_logits, y_val, run.logits, y_test)
    calibration.write_calibration(ctx.out_dir / "calibration.json", report, ctx.ckpt_path)
    t, test = report["temperature"], report["test"]
    before, after = (calibration.reliability_bins(run.logits, y_test, temp) for temp in (1.0, t))
    run.figure("reliability", lambda: reliability_figure(before, after, {**test, "temperature": t}))
    keys = ("ece", "ece_scaled", "nll", "nll_scaled")
    scalars = {f"calibration/{split}_{k}": report[split][k] for split in ("val", "test") for k in keys}
    ctx.loggers.scalars(scalars | {"calibration/temperature": t})
    print_rank_zero(
        f"temperature {t:.4f} (fitted on {len(val_raw)} validation images): test ECE {test['ece']:.4f} -> "
        f"{test['ece_scaled']:.4f}, NLL {test['nll']:.4f} -> {test['nll_scaled']:.4f}"
    )
    return report


def gradcam_suite(run: Run) -> dict[str, Any]:
    """Grad-CAM overlays of the first correctly and wrongly classified test images."""
    from alexnet_gtsrb.evaluation import explanations

    pred, labels, clean = run.logits.argmax(dim=-1).numpy(), run.labels, run.clean
    right = np.flatnonzero(pred == labels)[: int(run.cfg.gradcam.num_correct)]
    wrong = np.flatnonzero(pred != labels)[: int(run.cfg.gradcam.num_wrong)]
    cells, row_labels = [], []
    for title, idx in (("correct", right), ("wrong", wrong)):
        if len(idx) == 0:
            continue
        maps = explanations.gradcam(run.pixel_model, clean[idx], torch.as_tensor(pred[idx]), run.ctx.device)
        cells.append([(clean[i], f"T {labels[i]} / P {pred[i]}") for i in idx])
        cells.append(
            [(explanations.overlay(clean[i], m), f"{title}: P {pred[i]}") for i, m in zip(idx, maps, strict=True)]
        )
        row_labels += [title, "Grad-CAM"]
    run.figure("gradcam", lambda: image_grid_figure(cells, row_labels, "Grad-CAM on conv5 for the predicted class"))
    return {"correct": right.tolist(), "wrong": wrong.tolist(), "layer": explanations.LAYER_DESCRIPTION}


SUITE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "corruptions": corruptions_suite,
    "adversarial": adversarial_suite,
    "calibration": calibration_suite,
    "gradcam": gradcam_suite,
}


def _clean_accuracy(cfg: DictConfig) -> float:
    return float(robustness(cfg)["clean_accuracy"])


main = hydra_entry_point("robustness", _clean_accuracy)

if __name__ == "__main__":
    main()

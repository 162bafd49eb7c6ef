"""Calibration: expected calibration error (torchmetrics), reliability bins, temperature scaling.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar ``T > 0`` fitted on the *validation*
split by minimising its negative log-likelihood; it never changes the argmax, so accuracy is unchanged. The
fitted ``T`` is written to ``calibration.json``, which ``predict calibration=PATH`` reads. The fit returns a
temperature within :data:`TEMPERATURE_RANGE` and the reader accepts only those, so an edited file cannot turn
the probabilities into NaN or flatten them until rounding changes the top class.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.utils.files import MAX_CHECKPOINT_BYTES, atomic_write, open_regular_file, read_text_file

N_BINS = 15  # Guo et al. (2017) report ECE with 15 bins
#: The temperatures :func:`fit_temperature` returns and :func:`read_temperature` accepts: two orders of magnitude
#: either side of T = 1. Values far outside break float32 softmax: NaN probabilities as T nears 0, and as T
#: grows, every probability 1/classes with the top class left to rounding.
TEMPERATURE_RANGE = (0.01, 100.0)
_CALIBRATION_FIX = "Pass calibration=<the calibration.json that `python -m alexnet_gtsrb.robustness` wrote>."


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels))


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = N_BINS) -> float:
    """Expected calibration error (L1, equal-width confidence bins) of ``softmax(logits / T)``."""
    metric = MulticlassCalibrationError(num_classes=logits.shape[1], n_bins=n_bins, norm="l1")
    return float(metric(logits.float().div(temperature).softmax(dim=-1), labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The ``T`` within :data:`TEMPERATURE_RANGE` minimising NLL(logits / T, labels), by L-BFGS on ``log T`` (from
    T = 1, in float64).

    NLL is convex in ``1 / T``, so the minimiser within the range is the unbounded one clamped to it (logits that
    carry no information, as a model at chance gives, drive the unbounded one to infinity). Should the optimiser
    ever end worse than ``T = 1`` (it does not on any input we know of), ``1.0`` is returned, so scaling never
    raises the NLL it was fitted on.
    """
    z = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if math.isnan(t):
        return 1.0
    t = min(max(t, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])
    return 1.0 if nll(z, labels, t) > nll(z, labels, 1.0) else t


def reliability_bins(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = N_BINS
) -> list[dict[str, float]]:
    """Per equal-width confidence bin: lower edge, count, mean confidence, accuracy (NaN where empty)."""
    probs = logits.float().div(temperature).softmax(dim=-1)
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    rows = []
    for b in range(n_bins):
        m = (conf >= edges[b]) & (conf <= edges[b + 1] if b == n_bins - 1 else conf < edges[b + 1])
        n = int(m.sum())
        confidence, accuracy = (float(conf[m].mean()), float(correct[m].mean())) if n else (float("nan"),) * 2
        bounds = {"lower": float(edges[b]), "upper": float(edges[b + 1])}
        rows.append(bounds | {"count": n, "confidence": confidence, "accuracy": accuracy})
    return rows


def calibration_report(
    val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor, test_labels: torch.Tensor
) -> dict[str, Any]:
    """Temperature fitted on validation; ECE, NLL and accuracy before and after, on validation and test."""
    t = fit_temperature(val_logits, val_labels)
    report: dict[str, Any] = {"temperature": t, "n_bins": N_BINS, "fitted_on": "validation split"}
    for split, (z, y) in {"val": (val_logits, val_labels), "test": (test_logits, test_labels)}.items():
        acc = float((z.argmax(dim=-1) == y).float().mean())
        acc_t = float(((z / t).argmax(dim=-1) == y).float().mean())
        report[split] = {
            "num_images": len(y),
            "accuracy": acc,
            "accuracy_scaled": acc_t,
            "ece": ece(z, y),
            "ece_scaled": ece(z, y, t),
            "nll": nll(z, y),
            "nll_scaled": nll(z, y, t),
        }
    return report


# -- the stored temperature, read by predict ------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint file, read in chunks (a pipe or device is refused unread)."""
    h = hashlib.sha256()
    _, f = open_regular_file(path, "checkpoint", MAX_CHECKPOINT_BYTES)
    with f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_calibration(path: Path, report: dict[str, Any], ckpt_path: str | Path) -> None:
    """``calibration.json``: the report plus the checkpoint it belongs to (path and SHA-256)."""
    data = {**report, "ckpt_path": str(ckpt_path), "ckpt_sha256": file_sha256(ckpt_path)}
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_temperature(path: str | Path, ckpt_path: str | Path) -> float:
    """The temperature stored in a ``calibration.json`` written for this very checkpoint (checked by SHA-256),
    within :data:`TEMPERATURE_RANGE`. The file is read only when it is a regular file of a JSON's size."""
    p = Path(str(path)).expanduser()
    try:
        data = json.loads(read_text_file(p, "calibration file", fix=_CALIBRATION_FIX, error=ConfigError))
        t, (low, high) = data["temperature"], TEMPERATURE_RANGE
        if isinstance(t, bool) or not isinstance(t, int | float) or not low <= t <= high:
            raise ConfigError(
                f"calibration={p}: temperature {t!r} must be a positive finite number in [{low:g}, {high:g}] (the "
                "range temperature fitting returns); refused. Fit it again with `python -m alexnet_gtsrb.robustness "
                "ckpt_path=...`."
            )
        sha = str(data["ckpt_sha256"])
    except FileNotFoundError:
        raise UserError(
            f"calibration={p}: no such file; `python -m alexnet_gtsrb.robustness ckpt_path=...` writes "
            "calibration.json into its run folder."
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"calibration={p}: not a calibration.json written by robustness ({exc}).") from None
    if sha != file_sha256(ckpt_path):
        raise ConfigError(
            f"calibration={p} was fitted for another checkpoint ({data.get('ckpt_path')}); run robustness "
            f"with ckpt_path={ckpt_path} to fit its temperature."
        )
    return float(t)

"""How sure an accuracy is, and what it was measured on: Wilson intervals and the test set's description.

An accuracy of k correct out of n test images is a binomial proportion; its 95% interval says how far another
draw of n images could move it (on GTSRB's 430-image subset one image is 0.23 percentage points, and the 95%
interval of 421/430 = 0.979 is 0.961-0.989). The Wilson score interval keeps its coverage close to 95%
near 0 and 1, where accuracies sit and where the normal approximation ``p +- z sqrt(p(1-p)/n)`` fails (it
can exceed 1, and it is empty at k = n).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Two-sided 95% quantile of the standard normal, Phi^-1(0.975) = 1.95996398...
Z95 = 1.959964

#: Rows of GT-final_test.csv, the official GTSRB test set (Stallkamp et al. 2012, "Man vs. computer").
OFFICIAL_TEST_IMAGES = 12_630


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (E. B. Wilson 1927, "Probable inference, the law of succession, and statistical
    inference", JASA 22: 209-212) of ``correct`` successes in ``total`` trials, as (low, high).

    With p = k / n::

        centre     = (p + z^2 / (2n)) / (1 + z^2 / n)
        half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    It is the set of proportions q whose two-sided score test ``|p - q| / sqrt(q (1 - q) / n) <= z`` does not
    reject, so it always lies in [0, 1].
    """
    if isinstance(correct, bool) or isinstance(total, bool) or int(correct) != correct or int(total) != total:
        raise ValueError(f"correct and total must be whole counts, got {correct!r} and {total!r}")
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct} of {total}")
    n = float(total)
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exactly 0 and 1 there: no rounding below 1
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def format_accuracy(correct: int, total: int) -> str:
    """``"0.9791 (421/430; 95% Wilson interval 0.9607-0.9890)"``."""
    low, high = wilson_interval(correct, total)
    return f"{correct / total:.4f} ({correct}/{total}; 95% Wilson interval {low:.4f}-{high:.4f})"


def interval_metrics(prefix: str, correct: int, total: int) -> dict[str, float]:
    """``{prefix}_ci_low`` and ``{prefix}_ci_high``: the 95% Wilson interval of ``correct`` / ``total``."""
    low, high = wilson_interval(correct, total)
    return {f"{prefix}_ci_low": low, f"{prefix}_ci_high": high}


def track_interval(counts: Mapping[str, tuple[int, int]], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of an accuracy whose images come in tracks, from ``{track: (correct, images)}``.

    The frames of a GTSRB track are one physical sign, so a sign the network misreads costs a block of images
    and the images are not independent; Wilson's interval, which assumes they are, is too narrow. This is the
    cluster (track) bootstrap: ``draws`` resamples of whole tracks with replacement, each scored as
    sum(correct) / sum(images), and their 2.5% and 97.5% percentiles (Davison & Hinkley 1997, "Bootstrap
    Methods and their Application", section 3.8). With one image per track it is the ordinary bootstrap of a
    proportion. Fixed ``seed``: the same counts give the same interval.
    """
    if not counts:
        raise ValueError("track_interval needs at least one track")
    table = np.array(list(counts.values()), dtype=np.int64).reshape(-1, 2)
    picks = np.random.default_rng(seed).integers(0, len(table), size=(draws, len(table)))
    accuracy = table[picks, 0].sum(axis=1) / table[picks, 1].sum(axis=1)
    low, high = np.quantile(accuracy, [0.025, 0.975])
    return float(low), float(high)


def describe_test_set(labels: Iterable[int]) -> dict[str, Any]:
    """What an accuracy was measured on, from the test records' class ids: their number, whether that is the
    whole official test set, the images per class when every class present has the same number, and a sentence
    saying whether the number can be compared with published (full-test) results."""
    counts = Counter(int(label) for label in labels)
    n = sum(counts.values())
    per_class = next(iter(counts.values())) if counts and len(set(counts.values())) == 1 else None
    full = n == OFFICIAL_TEST_IMAGES
    if full:
        note = f"the {OFFICIAL_TEST_IMAGES:,} official GTSRB test images (comparable with published full-test results)"
    else:  # the records cannot tell an official subset from other data (synthetic trees): say only what is known
        balance = f", {per_class} per class" if per_class is not None else ""
        note = (
            f"{n:,} images{balance}: not the full {OFFICIAL_TEST_IMAGES:,}-image official GTSRB test set, "
            "not comparable with published full-test results"
        )
    return {"images": n, "official_full_test": full, "per_class": per_class, "classes": len(counts), "note": note}

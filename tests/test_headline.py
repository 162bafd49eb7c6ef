"""Headline numbers a reviewer accepts: one checkpoint rule everywhere, and every test accuracy with its interval.

The interval is checked against references outside the module: the closed form written out here, the values
Newcombe (1998) tabulates for the Wilson score interval, scipy's own implementation, and its exact coverage.
The checkpoint rule is checked on real (tiny) training runs: the file the final test scores, the one
``metrics.json`` names and the one ``evaluate ckpt_path=<run folder>`` scores are the same, and with
``callbacks=ema`` that file holds the EMA average at the end of training.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from alexnet_gtsrb.errors import ConfigError
from alexnet_gtsrb.evaluation.intervals import describe_test_set, format_accuracy, track_interval, wilson_interval
from alexnet_gtsrb.train import train
from tests.helpers import compose_config, tiny_overrides

Z = 1.959964  # Phi^-1(0.975) to 7 digits (any normal table)


def _wilson_by_hand(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson (1927): the q with |k/n - q| = z sqrt(q(1-q)/n), i.e. the roots of the quadratic
    (1 + z^2/n) q^2 - (2p + z^2/n) q + p^2 = 0 with p = k/n, solved with the quadratic formula."""
    p = k / n
    a = 1 + z * z / n
    b = -(2 * p + z * z / n)
    c = p * p
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(("k", "n"), [(421, 430), (426, 430), (430, 430), (0, 430), (1, 2), (12_400, 12_630)])
def test_wilson_interval_is_the_root_pair_of_the_score_test_quadratic(k, n):
    low, high = wilson_interval(k, n)
    ref_low, ref_high = _wilson_by_hand(k, n)
    assert low == pytest.approx(max(ref_low, 0.0), abs=1e-12)
    assert high == pytest.approx(min(ref_high, 1.0), abs=1e-12)
    assert low <= k / n <= high


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombe_1998(k, n, low, high):
    """Newcombe, "Two-sided confidence intervals for the single proportion", Stat. Med. 17 (1998) 857-872,
    Table II, method 3 (score interval without continuity correction), to the 4 digits printed there."""
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(low, abs=5e-5) and got[1] == pytest.approx(high, abs=5e-5)


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(421, 430), (425, 430), (3, 86), (86, 86), (12_345, 12_630)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    """Exact coverage at n = 430: the binomial probability of every k whose interval holds p, summed. The
    score interval's coverage oscillates around 95% (Brown, Cai & DasGupta 2001); a wrong z or a wrong
    half-width moves the average far off (z = 1.645 gives ~90%)."""
    n = 430
    intervals = [wilson_interval(k, n) for k in range(n + 1)]

    def coverage(p: float) -> float:
        pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
        return sum(q for q, (lo, hi) in zip(pmf, intervals, strict=True) if lo <= p <= hi)

    grid = [0.90 + 0.0025 * i for i in range(37)]  # 0.90 ... 0.99: where GTSRB accuracies lie
    values = [coverage(p) for p in grid]
    assert 0.94 <= sum(values) / len(values) <= 0.96, values
    assert min(values) >= 0.90, values


def test_wilson_interval_refuses_impossible_counts():
    for k, n in [(5, 4), (-1, 4), (1, 0), (0.5, 4)]:
        with pytest.raises(ValueError):
            wilson_interval(k, n)  # type: ignore[arg-type]


def test_track_interval_with_one_image_per_track_is_the_normal_binomial_interval():
    """Tracks of one image are independent images: the bootstrap percentiles come out at the normal
    approximation p +- z sqrt(p (1 - p) / n) (good at n = 1000, p = 0.9), up to the resampling noise."""
    counts = {f"t{i}": (int(i >= 100), 1) for i in range(1000)}  # 900 of 1000 right
    half = Z * math.sqrt(0.9 * 0.1 / 1000)
    low, high = track_interval(counts)
    assert low == pytest.approx(0.9 - half, abs=0.004) and high == pytest.approx(0.9 + half, abs=0.004)


def _binomial_quantile(q: float, n: int, p: float) -> int:
    """The smallest x with P(X <= x) >= q for X ~ Binomial(n, p), from the probability mass function."""
    cdf = 0.0
    for x in range(n + 1):
        cdf += math.comb(n, x) * p**x * (1 - p) ** (n - x)
        if cdf >= q:
            return x
    return n


def test_track_interval_counts_a_misread_sign_once_not_per_frame():
    """100 tracks of 10 frames, 5 tracks wholly wrong (accuracy 0.95). Resampling tracks makes the number of
    wrong tracks Binomial(100, 0.05), so the interval is 1 - (its 97.5% and 2.5% quantiles) / 100; an
    implementation that resampled frames would give about Wilson's interval of 950/1000, four times
    narrower."""
    counts = {f"t{i}": (0 if i < 5 else 10, 10) for i in range(100)}
    low, high = track_interval(counts)
    expected = (1 - _binomial_quantile(0.975, 100, 0.05) / 100, 1 - _binomial_quantile(0.025, 100, 0.05) / 100)
    assert low == pytest.approx(expected[0], abs=0.011) and high == pytest.approx(expected[1], abs=0.011)
    wilson_low, wilson_high = wilson_interval(950, 1000)
    assert high - low > 2.5 * (wilson_high - wilson_low)
    assert track_interval(counts) == (low, high)  # fixed seed: the same counts, the same interval


def test_test_set_description_says_when_numbers_are_not_comparable():
    subset = describe_test_set([c for c in range(43) for _ in range(10)])  # ../shared/gtsrb: 10 per class
    assert (subset["images"], subset["per_class"], subset["official_full_test"]) == (430, 10, False)
    assert "430 images, 10 per class" in subset["note"] and "12,630" in subset["note"]
    assert "not comparable" in subset["note"]
    full = describe_test_set([i % 43 for i in range(12_630)])  # GT-final_test.csv has 12,630 rows
    assert full["official_full_test"] is True and "not comparable" not in full["note"]
    assert describe_test_set([0, 0, 1])["per_class"] is None


def test_format_accuracy_prints_count_and_interval():
    low, high = _wilson_by_hand(421, 430)
    assert format_accuracy(421, 430) == f"0.9791 (421/430; 95% Wilson interval {low:.4f}-{high:.4f})"


# -- the checkpoint rule, on real tiny runs ------------------------------------------------------------------
def test_an_unknown_checkpoint_rule_is_one_line_before_training(compose_cfg, synthetic_root):
    cfg = compose_cfg([*tiny_overrides(synthetic_root), "test_ckpt=bets"])
    with pytest.raises(ConfigError, match=r"^test_ckpt='bets'; allowed: last \(.*\); best \(.*\)\.$"):
        train(cfg)


def _evaluate(run_dir: Path, synthetic_root: Path, out: Path) -> dict:
    """``evaluate ckpt_path=<run folder>``, in-process."""
    from alexnet_gtsrb.evaluate import evaluate

    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={run_dir}",
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            "data.num_workers=0",
            f"paths.output_dir={out}",
        ],
    )
    return evaluate(cfg)


def _gt_rows(root: Path) -> int:
    csv_path = root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"
    return len(csv_path.read_text().strip().splitlines()) - 1  # the header, then one row per image


@pytest.mark.slow
def test_last_rule_tests_the_end_of_training_ema_weights_everywhere(compose_cfg, synthetic_root, tmp_path, capsys):
    """test_ckpt=last (the default) with callbacks=ema and a step checkpoint written after every step: the final
    test, metrics.json and evaluate on the run folder all use checkpoints/last.ckpt, and that file is the end
    of training: its global step is the last one and its state_dict is the EMA average the callback holds
    then (not the raw weights, which sit beside it)."""
    from alexnet_gtsrb.callbacks.ema import EMAWeights

    run_dir = tmp_path / "run"
    over = [*tiny_overrides(synthetic_root, batch_size=32), "callbacks=ema", "callbacks.ema.decay=0.9"]
    over += ["callbacks.step_checkpoint.every_n_train_steps=1", "trainer.max_epochs=2"]
    over += ["trainer.limit_train_batches=3", f"paths.output_dir={run_dir}"]
    metrics, objs = train(compose_cfg(over))
    trainer = objs["trainer"]
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == trainer.global_step == 6
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMAWeights))
    average = {k.removeprefix("module."): v for k, v in ema._average_model.state_dict().items()}
    assert all(torch.equal(saved["state_dict"][k], average[k]) for k in saved["state_dict"])
    raw = saved["current_model_state"]
    assert any(not torch.equal(saved["state_dict"][k], raw[k]) for k in raw if raw[k].is_floating_point())
    tested = objs["model"].state_dict()
    assert all(torch.equal(tested[k], saved["state_dict"][k]) for k in tested)  # the test ran on that file

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["test_ckpt"] == "last" and summary["test_checkpoint"] == str(last)
    n = _gt_rows(synthetic_root)
    assert summary["test_images"] == n and summary["test_set"]["images"] == n
    correct = summary["test_correct"]
    assert metrics["test/acc"] * n == pytest.approx(correct, abs=1e-3)
    low, high = _wilson_by_hand(correct, n)
    assert summary["metrics"]["test/acc_ci_low"] == pytest.approx(max(low, 0.0), abs=1e-9)
    assert summary["metrics"]["test/acc_ci_high"] == pytest.approx(min(high, 1.0), abs=1e-9)
    out = capsys.readouterr().out
    assert f"test checkpoint: {last} (test_ckpt=last: the weights at the end of the last epoch" in out
    assert f"test/acc: {correct / n:.4f} ({correct}/{n}; 95% Wilson interval {low:.4f}-{high:.4f})" in out
    assert re.search(rf"test set: {n} images, \d+ per class: not the full 12,630-image .* not comparable", out)

    report = _evaluate(run_dir, synthetic_root, tmp_path / "eval")
    assert report["ckpt_path"] == str(last) and report["ckpt_chosen_by"].startswith("the run folder's test_ckpt=last")
    assert (report["correct"], report["num_images"]) == (correct, n)  # the same file scores the same images
    assert f"checkpoint: {last} (the run folder's test_ckpt=last: the weights at the end" in capsys.readouterr().out


@pytest.mark.slow
def test_best_rule_is_followed_by_the_test_metrics_json_and_evaluate(compose_cfg, synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    over = [*tiny_overrides(synthetic_root, batch_size=32), "test_ckpt=best", "trainer.max_epochs=2"]
    over += ["trainer.limit_train_batches=3", "scheduler=none", f"paths.output_dir={run_dir}"]
    _, objs = train(compose_cfg(over))
    best = objs["trainer"].checkpoint_callback.best_model_path
    assert Path(best).name.startswith("epoch_")
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["test_ckpt"] == "best" and summary["test_checkpoint"] == best
    saved = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    tested = objs["model"].state_dict()
    assert all(torch.equal(tested[k], saved[k]) for k in tested)
    report = _evaluate(run_dir, synthetic_root, tmp_path / "eval")
    assert report["ckpt_path"] == best and report["ckpt_chosen_by"].startswith("the run folder's test_ckpt=best")
    assert report["correct"] == summary["test_correct"]


def test_a_run_folder_resolves_to_the_checkpoint_of_its_own_rule(tmp_path):
    """checkpoint_for(<run folder>): the run's test_ckpt (metrics.json, else .hydra/config.yaml, else last) picks
    the file; a file is itself; a folder that is not a run folder gives its newest last*.ckpt."""
    from alexnet_gtsrb.errors import UserError
    from alexnet_gtsrb.run_folder import checkpoint_for

    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    last, best = ckpts / "last.ckpt", ckpts / "epoch_003.ckpt"
    best.write_bytes(b"best")
    with pytest.raises(UserError, match="test_ckpt=last"):  # the rule's file is missing: said, not guessed
        checkpoint_for(run)
    last.write_bytes(b"last")
    assert checkpoint_for(run)[0] == str(last)  # no declared rule: the default, last
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("test_ckpt: best\n")
    assert checkpoint_for(run)[0] == str(best)
    (run / "metrics.json").write_text(json.dumps({"test_ckpt": "last", "best_checkpoint": str(best)}))
    path, how = checkpoint_for(run)
    assert path == str(last) and how.startswith("the run folder's test_ckpt=last")
    assert checkpoint_for(best) == (str(best), "the file named")
    assert checkpoint_for(ckpts)[0] == str(last)  # a bare folder of checkpoints
    (run / "metrics.json").write_text(json.dumps({"test_ckpt": "latest"}))
    with pytest.raises(ConfigError, match=r"^test_ckpt='latest'; allowed"):
        checkpoint_for(run)

"""Robustness, calibration and explanations: the building blocks, then the entry point end to end on a
checkpoint of a real (tiny) training run, read back from its CSV, JSON and TensorBoard files."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.evaluation import calibration, corruptions
from alexnet_gtsrb.evaluation.pixel_model import PixelModel, to_pixels
from tests.helpers import read_event_tags, run_in_process


# -- corruptions ----------------------------------------------------------------------------------------------
def _image(seed: int = 0, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(40, 200, 3)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rng.integers(0, 255, 3)  # a square "sign"
    return img


def _identity(image: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": image}


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_each_corruption_changes_the_image_more_with_severity_and_repeats_with_its_seed(name):
    img = _image()
    clean = corruptions.corrupted_inputs([img], name, 0, 40, _identity, seed=3)[0]
    assert np.array_equal(clean, img), "severity 0 must be the identity"
    diffs = []
    for s in corruptions.SEVERITIES:
        a = corruptions.corrupted_inputs([img], name, s, 40, _identity, seed=3)[0]
        b = corruptions.corrupted_inputs([img], name, s, 40, _identity, seed=3)[0]
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), f"{name} severity {s} is not reproducible with its seed"
        diffs.append(float(np.abs(a.astype(int) - img).mean()))
    assert diffs[-1] > 0, f"{name} at severity 5 left the image unchanged"
    assert diffs[-1] >= diffs[0] - 1.0, f"{name}: severity 5 changes less than severity 1 ({diffs})"


def test_contrast_is_imagenet_c_blend_towards_the_channel_mean():
    img = _image(1).astype(np.float64)
    out = corruptions.corrupted_inputs([img.astype(np.uint8)], "contrast", 5, 40, _identity, seed=0)[0]
    means = img.mean(axis=(0, 1), keepdims=True)
    expected = np.clip((img - means) * 0.05 + means, 0, 255).round()  # ImageNet-C contrast, severity 5
    assert np.abs(out - expected).max() <= 1


def test_corruption_seeds_do_not_depend_on_which_corruptions_run():
    assert corruptions.condition_seed(0, "fog", 2) != corruptions.condition_seed(0, "snow", 2)
    assert corruptions.condition_seed(0, "fog", 2) != corruptions.condition_seed(0, "fog", 3)
    assert corruptions.condition_seed(5, "fog", 2) == corruptions.condition_seed(5, "fog", 2)


def test_bad_corruption_settings_name_the_key():
    assert corruptions.resolve_names("all") == list(corruptions.CORRUPTIONS)
    with pytest.raises(ConfigError, match="unknown.*nope"):
        corruptions.resolve_names(["fog", "nope"])
    with pytest.raises(ConfigError, match="severities"):
        corruptions.check_severities([1, 6])


# -- calibration ----------------------------------------------------------------------------------------------
def _overconfident(seed: int, n: int = 600, classes: int = 10, scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5  # right most of the time
    return logits * scale, labels


@pytest.mark.parametrize(("t_true", "seed"), [(0.5, 0), (1.0, 1), (2.5, 2), (4.0, 3)])
def test_temperature_fitted_on_logits_with_a_known_temperature_finds_it(t_true, seed):
    """Calibrated logits ``z`` (labels drawn from ``softmax(z)``) reported as ``t_true * z``: the NLL minimiser is
    ``t_true`` up to sampling error (about 1% at 10,000 images), and it is the minimiser found by a grid search
    written here, on an NLL written here (``logsumexp(z / T) - z_y / T``, averaged, in float64)."""
    n, classes = 10_000, 10
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(z.softmax(-1), 1, generator=g)[:, 0]
    logits = (z * t_true).float()

    z_obs = logits.double().numpy()
    z_true = z_obs[np.arange(n), labels.numpy()]

    def nll(temperatures: np.ndarray) -> np.ndarray:  # the NLL at each temperature, 20 at a time
        out = []
        for chunk in np.array_split(np.asarray(temperatures, np.float64), max(1, len(temperatures) // 20)):
            scaled = z_obs[None] / chunk[:, None, None]
            top = scaled.max(axis=-1)
            lse = np.log(np.exp(scaled - top[..., None]).sum(axis=-1)) + top
            out.append((lse - z_true[None] / chunk[:, None]).mean(axis=-1))
        return np.concatenate(out)

    coarse = np.logspace(-1, 1, 201)  # 0.1 .. 10, steps of 2.3%
    best = float(coarse[nll(coarse).argmin()])
    fine = np.linspace(best / 1.03, best * 1.03, 301)  # steps of 0.02%
    t_grid = float(fine[nll(fine).argmin()])

    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(t_grid, rel=3e-4), (t, t_grid)
    assert float(nll(np.array([t]))[0]) <= float(nll(fine).min()) + 1e-12
    assert t == pytest.approx(t_true, rel=0.05)
    # Scaled by the fitted T, the logits are calibrated by construction: ECE is sampling noise only.
    assert calibration.ece(logits, labels, t) < 0.03
    if t_true != 1.0:
        assert calibration.ece(logits, labels) > 0.1


def test_ece_equals_the_weighted_gap_of_the_reliability_bins():
    logits, labels = _overconfident(7, scale=1.0)
    bins = calibration.reliability_bins(logits, labels)
    n = len(labels)
    by_hand = sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert sum(b["count"] for b in bins) == n
    assert calibration.ece(logits, labels) == pytest.approx(by_hand, abs=1e-5)


def test_calibration_file_belongs_to_its_checkpoint(tmp_path):
    ckpt, other = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    ckpt.write_bytes(b"weights of a")
    other.write_bytes(b"weights of b")
    path = tmp_path / "calibration.json"
    calibration.write_calibration(path, {"temperature": 1.7}, ckpt)
    assert calibration.read_temperature(path, ckpt) == pytest.approx(1.7)
    with pytest.raises(ConfigError, match="another checkpoint"):
        calibration.read_temperature(path, other)
    with pytest.raises(UserError, match="no such file"):
        calibration.read_temperature(tmp_path / "missing.json", ckpt)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a calibration.json"):
        calibration.read_temperature(tmp_path / "bad.json", ckpt)
    data = json.loads(path.read_text())
    (tmp_path / "neg.json").write_text(json.dumps({**data, "temperature": -1}))
    with pytest.raises(ConfigError, match="positive"):
        calibration.read_temperature(tmp_path / "neg.json", ckpt)


def _calibration_with(tmp_path, temperature) -> tuple:
    """A calibration.json for a checkpoint, right in every field but the temperature."""
    ckpt, path = tmp_path / "a.ckpt", tmp_path / "calibration.json"
    ckpt.write_bytes(b"weights of a")
    calibration.write_calibration(path, {"temperature": 1.7}, ckpt)
    path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": temperature}))
    return path, ckpt


@pytest.mark.parametrize("value", [1e-300, 1e300, float("nan"), float("inf"), -1, 0, 0.0099, 100.01, "abc", True])
def test_a_temperature_outside_the_fitted_range_is_refused_in_one_line(tmp_path, value):
    """Issue 28, item 5: with the right checkpoint hash, 1e-300 printed NaN probabilities and 1e300 made every
    probability 1/43 (the top class left to rounding), both with exit 0."""
    path, ckpt = _calibration_with(tmp_path, value)
    with pytest.raises(ConfigError) as refused:
        calibration.read_temperature(path, ckpt)
    message = str(refused.value)
    assert "\n" not in message and f"calibration={path}: temperature {value!r} " in message, message
    assert "[0.01, 100]" in message, message


@pytest.mark.parametrize("value", [0.01, 1, 1.7, 100])
def test_a_temperature_in_the_fitted_range_is_read(tmp_path, value):
    assert calibration.read_temperature(*_calibration_with(tmp_path, value)) == value


def test_the_fitted_temperature_stays_in_the_range_the_reader_accepts(tmp_path):
    """Logits that carry no information drive the unbounded NLL minimiser to T = infinity, logits shrunk 10,000
    times to T = 1e-4: the fit stops at the ends of the range, and the reader takes what the fit writes."""
    g = torch.Generator().manual_seed(0)
    noise, guesses = torch.randn(2000, 10, generator=g) * 5, torch.randint(0, 10, (2000,), generator=g)
    z = torch.randn(2000, 10, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(z.softmax(-1), 1, generator=g)[:, 0]
    fitted = {"hot": calibration.fit_temperature(noise, guesses), "cold": calibration.fit_temperature(z * 1e-4, labels)}
    assert fitted == {"hot": 100.0, "cold": 0.01}
    for t in fitted.values():
        assert calibration.read_temperature(*_calibration_with(tmp_path, t)) == t


# -- the entry point on a trained checkpoint ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tiny_run):
    return next((tiny_run.dir / "checkpoints").glob("epoch_*.ckpt"))


def test_pixel_model_gives_the_models_own_logits(tiny_ckpt):
    from alexnet_gtsrb.inference import load_classifier

    model, _ = load_classifier(str(tiny_ckpt))
    images = torch.randint(0, 256, (4, 67, 67, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(PixelModel(model).eval()(to_pixels(images)), model(images).float(), atol=1e-4)


@pytest.fixture(scope="module")
def robustness_run(tiny_run, tiny_ckpt, synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    args = [
        f"ckpt_path={tiny_ckpt}",
        f"data.data_dir={synthetic_root}",
        "data.num_workers=0",
        f"paths.output_dir={out}",
        "adversarial.pgd_steps=3",
        "adversarial.epsilons=[0,2,8,32]",
    ]
    r = run_in_process("robustness", args)
    assert r.returncode == 0, r.stderr[-3000:]
    evaluated = run_in_process("evaluate", [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}",
                                        "data.num_workers=0", f"paths.output_dir={out}/evaluate"])  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return out, json.loads((out / "metrics.json").read_text()), json.loads((out / "evaluate/metrics.json").read_text())


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_corruption_table_shape_and_severity_zero_is_the_clean_evaluation(robustness_run):
    out, metrics, evaluated = robustness_run
    assert metrics["clean_accuracy"] == pytest.approx(evaluated["test/acc"])  # same images, same pipeline
    rows = _csv(out / "corruptions.csv")
    assert len(rows) == len(corruptions.CORRUPTIONS) * 6
    assert {r["corruption"] for r in rows} == set(corruptions.CORRUPTIONS)
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        if r["severity"] == "0":
            assert float(r["accuracy"]) == pytest.approx(metrics["clean_accuracy"])
    matrix = _csv(out / "corruption_matrix.csv")
    assert len(matrix) == 10 and list(matrix[0]) == ["corruption", "s0", "s1", "s2", "s3", "s4", "s5", "mean"]
    summary = metrics["corruptions"]
    assert summary["mean_corruption_accuracy"] == pytest.approx(np.mean([float(m["mean"]) for m in matrix]))
    clean = metrics["clean_accuracy"]
    assert summary["relative_drop"] == pytest.approx((clean - summary["mean_corruption_accuracy"]) / clean)
    assert "| corruption |" in (out / "corruption_matrix.md").read_text()


@pytest.mark.slow
def test_adversarial_accuracy_starts_at_clean_and_does_not_rise_with_pgd_epsilon(robustness_run):
    out, metrics, _ = robustness_run
    rows = _csv(out / "adversarial.csv")
    assert [(r["attack"], float(r["epsilon_255"])) for r in rows] == [
        (a, e) for a in ("fgsm", "pgd") for e in (0.0, 2.0, 8.0, 32.0)
    ]
    for r in rows:
        if float(r["epsilon_255"]) == 0:
            assert float(r["accuracy"]) == pytest.approx(metrics["clean_accuracy"])
    pgd = [float(r["accuracy"]) for r in rows if r["attack"] == "pgd"]
    assert all(b <= a for a, b in zip(pgd, pgd[1:], strict=False)), pgd
    if metrics["clean_accuracy"] > 0:
        assert pgd[-1] < metrics["clean_accuracy"], "PGD at 32/255 did not lower accuracy at all"


@pytest.mark.slow
def test_calibration_is_fitted_on_the_validation_split_and_scores_the_evaluated_test_images(
    robustness_run, tiny_run, synthetic_root
):
    """The wiring of the calibration suite (the fit itself is checked against a reference above): its test rows
    are the images and predictions that ``evaluate`` scores through the model's own uint8 path, and it was
    fitted on the training run's validation split."""
    out, _, evaluated = robustness_run
    report = json.loads((out / "calibration.json").read_text())
    test_images = len(list((synthetic_root / "GTSRB/Final_Test/Images").glob("*.ppm")))
    assert report["test"]["num_images"] == evaluated["num_images"] == test_images
    assert report["test"]["accuracy"] == pytest.approx(evaluated["correct"] / evaluated["num_images"])
    assert report["val"]["num_images"] == len(tiny_run.datamodule.val_set)


@pytest.mark.slow
def test_figures_and_tensorboard_read_back(robustness_run):
    out, metrics, _ = robustness_run
    for png in ("corruption_examples.png", "adversarial_examples.png", "reliability.png", "gradcam.png"):
        assert (out / png).stat().st_size > 5000, png
    tags = read_event_tags(out / "tensorboard")
    steps = [e.step for e in tags["corruption/fog"]]
    assert steps == [0, 1, 2, 3, 4, 5]
    assert [e.step for e in tags["adversarial/pgd"]] == [0, 2, 8, 32]
    assert tags["calibration/temperature"][0].value == pytest.approx(metrics["calibration"]["temperature"])
    for image_tag in ("robustness/gradcam", "robustness/reliability", "robustness/corruption_examples"):
        assert image_tag in tags
    assert set(metrics["seconds"]) >= {"corruptions", "adversarial", "calibration", "gradcam", "total"}


@pytest.mark.slow
def test_predict_outputs_calibrated_probabilities_and_gradcam_overlays(
    robustness_run, tiny_ckpt, synthetic_root, tmp_path
):
    out, metrics, _ = robustness_run
    images = sorted((synthetic_root / "GTSRB/Final_Test/Images").glob("*.ppm"))[:3]
    common = [f"ckpt_path={tiny_ckpt}", f"images=[{','.join(map(str, images))}]", "format=json", "top_k=43"]
    plain = run_in_process("predict", [*common, f"paths.output_dir={tmp_path}/a"])
    scaled = run_in_process(
        "predict", [*common, f"calibration={out}/calibration.json", "gradcam=true", f"paths.output_dir={tmp_path}/b"]
    )
    assert plain.returncode == 0 and scaled.returncode == 0, scaled.stderr[-2000:]
    t = metrics["calibration"]["temperature"]
    for p, s in zip(json.loads(plain.stdout), json.loads(scaled.stdout), strict=True):
        probs = torch.tensor([x["prob"] for x in sorted(p["top_k"], key=lambda x: x["class_id"])])
        expected = (probs.log() / t).softmax(-1)  # softmax(z / T) from softmax(z): log p = z - logsumexp(z)
        got = torch.tensor([x["prob"] for x in sorted(s["top_k"], key=lambda x: x["class_id"])])
        assert torch.allclose(got, expected, atol=1e-4)
        assert p["top_k"][0]["class_id"] == s["top_k"][0]["class_id"]
    overlays = sorted((tmp_path / "b/gradcam").glob("*.png"))
    assert [o.name for o in overlays] == [f"{i:04d}_{p.stem}.png" for i, p in enumerate(images)]


def test_predict_refuses_a_temperature_of_1e_minus_300_instead_of_printing_nan(tiny_ckpt, synthetic_root, tmp_path):
    path = tmp_path / "calibration.json"
    calibration.write_calibration(path, {"temperature": 1e-300}, tiny_ckpt)
    image = next((synthetic_root / "GTSRB/Final_Test/Images").glob("*.ppm"))
    r = run_in_process("predict", [f"ckpt_path={tiny_ckpt}", f"images=[{image}]", f"calibration={path}",
                                   f"paths.output_dir={tmp_path}/p"])  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nan" not in r.stdout.lower(), r.stderr[-1500:]
    assert len(errors) == 1 and "temperature 1e-300 must be a positive finite number in [0.01, 100]" in errors[0]


def test_predict_refuses_a_network_whose_finite_weights_overflow_its_outputs(tiny_ckpt, synthetic_root, tmp_path):
    raw = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    last = [k for k in raw["state_dict"] if k.endswith(".weight") and raw["state_dict"][k].ndim == 2][-1]
    raw["state_dict"][last] = torch.full_like(raw["state_dict"][last], 3e38)  # finite, but the logits are inf
    torch.save(raw, tmp_path / "overflow.ckpt")
    image = next((synthetic_root / "GTSRB/Final_Test/Images").glob("*.ppm"))
    r = run_in_process("predict", [f"ckpt_path={tmp_path / 'overflow.ckpt'}", f"images=[{image}]",
                                   f"paths.output_dir={tmp_path}/p"])  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and "nan" not in r.stdout.lower() and len(errors) == 1, r.stderr[-1500:]
    assert "outputs are not finite (NaN or inf) for 1 of 1 image(s)" in errors[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("suites=[bogus]", "suites=['bogus']: allowed"),
        ("corruptions.names=[rain]", "unknown ['rain']"),
        ("adversarial.epsilons=[-1]", "adversarial.epsilons"),
        ("adversarial.epsilons=[nan]", "adversarial.epsilons=[nan]"),
        ("adversarial.pgd_step_size=abc", "pgd_step_size=abc"),
        ("adversarial.attacks=[cw]", "adversarial.attacks"),
    ],
)
def test_bad_values_are_one_line_errors(tiny_ckpt, synthetic_root, tmp_path, override, message):
    r = run_in_process("robustness", [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}", override,
                                  f"paths.output_dir={tmp_path}"])  # fmt: skip
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]


@pytest.fixture()
def without_captum(monkeypatch):
    """As if the optional 'robustness' extra were not installed: captum and the modules built on it unimportable."""
    import alexnet_gtsrb.evaluation as evaluation

    for name in [m for m in sys.modules if m == "captum" or m.startswith("captum.")] + ["captum"]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("adversarial", "explanations"):
        monkeypatch.delitem(sys.modules, f"alexnet_gtsrb.evaluation.{name}", raising=False)
        monkeypatch.delattr(evaluation, name, raising=False)


def test_captum_is_needed_only_by_the_attack_and_gradcam_suites(without_captum, tiny_ckpt, synthetic_root, tmp_path):
    common = [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}", "data.num_workers=0"]
    r = run_in_process("robustness", [*common, "suites=[calibration]", f"paths.output_dir={tmp_path}/c"])
    assert r.returncode == 0, r.stderr[-1500:]
    extra = "needs the optional 'robustness' extra: pip install 'alexnet_gtsrb[robustness]'"
    r = run_in_process(
        "robustness", [*common, "suites=[calibration,gradcam,adversarial]", f"paths.output_dir={tmp_path}/g"]
    )
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and errors[-1].startswith("error: suites=[") and errors[-1].endswith(extra), r.stderr[
        -1500:
    ]
    assert "adversarial" in errors[-1] and "gradcam" in errors[-1] and "Traceback" not in r.stderr
    image = next((synthetic_root / "GTSRB/Final_Test/Images").glob("*.ppm"))
    r = run_in_process(
        "predict", [f"ckpt_path={tiny_ckpt}", f"images=[{image}]", "gradcam=true", f"paths.output_dir={tmp_path}/p"]
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: gradcam=true {extra}", r.stderr[-1500:]

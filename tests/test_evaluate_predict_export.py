"""The post-training entry points, run as subprocesses on a tiny checkpoint: evaluate, predict, export.

A checkpoint is trained once per module (in-process, 2 batches, BatchNorm AlexNet with LRN switched on so
that export covers the fast LRN's plain-ops path), then each entry point runs the way a user runs it and
its real outputs are checked against the model computed in-process.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from alexnet_gtsrb.data.classes import CLASS_NAMES, NUM_CLASSES
from alexnet_gtsrb.data.io import decode_rgb
from alexnet_gtsrb.data.transforms import build_transform, normalize_uint8
from alexnet_gtsrb.evaluation.intervals import track_interval
from alexnet_gtsrb.evaluation.views import _flip_source_index, five_crops
from alexnet_gtsrb.inference import eval_settings, load_classifier
from tests.helpers import compose_config, read_event_tags, run_module

IMAGE_SIZE = 67


@pytest.fixture(scope="module")
def tiny_ckpt(synthetic_root, tmp_path_factory) -> Path:
    """last.ckpt of a 2-batch demo run at 67 px (BatchNorm + LRN), trained in-process once per module."""
    from alexnet_gtsrb.train import train

    out = tmp_path_factory.mktemp("train_run")
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={out}",
            f"paths.log_dir={out}/logs",
            "experiment=demo",
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            f"data.image_size={IMAGE_SIZE}",
            "data.num_workers=0",
            "model.net.lrn=true",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "test=false",
        ],
    )
    train(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def _test_images(root: Path) -> list[Path]:
    return sorted((root / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))


def _assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = cv2.imread(str(path))
    assert image is not None and min(image.shape[:2]) >= min_side, path


# -- evaluate ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_writes_report(tiny_ckpt, synthetic_root, tmp_path):
    run_dir = tmp_path / "eval"
    proc = run_module(
        "evaluate", [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}", f"hydra.run.dir={run_dir}"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = float(re.search(r"^test/acc: ([0-9.]+)", proc.stdout, re.M).group(1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    n_test = len(_test_images(synthetic_root))
    assert metrics["num_images"] == n_test
    assert metrics["test/acc"] == pytest.approx(metrics["correct"] / n_test)
    assert printed == pytest.approx(metrics["test/acc"], abs=5e-5)
    assert metrics["test/acc_torchmetrics"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["settings"]["image_size"] == IMAGE_SIZE  # from the checkpoint, not the data group's 227
    assert metrics["test_views"] == 1
    # the 95% Wilson interval (Wilson 1927), written out here: centre and half-width of the score interval
    k, z = metrics["correct"], 1.959964
    p, d = k / n_test, 1 + z * z / n_test
    centre = (p + z * z / (2 * n_test)) / d
    half = z / d * (p * (1 - p) / n_test + z * z / (4 * n_test * n_test)) ** 0.5
    assert metrics["test/acc_ci_low"] == pytest.approx(max(centre - half, 0.0), abs=1e-9)
    assert metrics["test/acc_ci_high"] == pytest.approx(min(centre + half, 1.0), abs=1e-9)
    ci = f"{metrics['test/acc_ci_low']:.4f}-{metrics['test/acc_ci_high']:.4f}"
    assert f"({k}/{n_test}; 95% Wilson interval {ci})" in proc.stdout
    # what the test set is: the synthetic tree has test_per_class=2 of each of the 43 classes
    assert f"test set: {n_test} images, 2 per class: not the full 12,630-image official GTSRB test set" in proc.stdout
    assert "not comparable with published full-test results" in proc.stdout
    assert metrics["test_set"]["official_full_test"] is False and metrics["test_set"]["per_class"] == 2
    assert metrics["ckpt_path"] == str(tiny_ckpt) and f"checkpoint: {tiny_ckpt} (the file named)" in proc.stdout

    with open(run_dir / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == NUM_CLASSES
    assert sorted(int(r["class_id"]) for r in rows) == list(range(NUM_CLASSES))
    assert all(r["name"] for r in rows)
    assert sum(int(r["support"]) for r in rows) == n_test
    assert sum(int(r["correct"]) for r in rows) == metrics["correct"]
    accs = [float(r["accuracy"]) for r in rows if r["accuracy"]]
    assert accs == sorted(accs)  # worst first
    md = (run_dir / "per_class.md").read_text().splitlines()
    assert len(md) == 2 + NUM_CLASSES + 1 and md[0].startswith("| class_id | name |") and "macro average" in md[-1]
    # precision / recall / F1 per class (torchmetrics): recall is the class's accuracy, F1 their harmonic mean
    for r in rows:
        if not r["support"] or r["support"] == "0":
            continue
        p_, r_, f_ = float(r["precision"]), float(r["recall"]), float(r["f1"])
        assert r_ == pytest.approx(float(r["accuracy"]), abs=1e-4)
        assert f_ == pytest.approx(2 * p_ * r_ / (p_ + r_) if p_ + r_ else 0.0, abs=2e-4)
    for name in ("precision", "recall", "f1"):
        assert 0.0 <= metrics[f"test/{name}_macro"] <= 1.0
        assert f"{name} {metrics[f'test/{name}_macro']:.4f}" in proc.stdout  # printed

    _assert_png(run_dir / "confusion_matrix.png")
    _assert_png(run_dir / "misclassified.png")
    tags = read_event_tags(run_dir / "tensorboard")
    assert tags["test/acc"][-1].value == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert "test/confusion_matrix" in tags
    assert tags["test/f1_macro"][-1].value == pytest.approx(metrics["test/f1_macro"], abs=1e-6)
    assert any(t.startswith("test_class_recall/") for t in tags)


@pytest.mark.slow
def test_evaluate_a_committee_on_the_validation_split(tiny_ckpt, synthetic_root, tmp_path):
    """``split=val committee=[second]``: every image of the validation split the run held out, scored by the
    mean of two checkpoints' probabilities; the correct count equals that mean computed here, image by image,
    from the two models (the second is the first with its weights perturbed, so the two disagree)."""
    from alexnet_gtsrb.data.datamodule import GTSRBDataModule
    from tests.helpers import run_in_process

    raw = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for name, value in raw["state_dict"].items():
        if value.is_floating_point() and name.endswith("weight"):
            value.add_(0.5 * value.std() * torch.randn(value.shape, generator=generator))
    second = tmp_path / "second.ckpt"
    torch.save(raw, second)
    run_dir = tmp_path / "eval_val"
    args = [f"ckpt_path={tiny_ckpt}", f"committee=[{second}]", "split=val", f"data.data_dir={synthetic_root}"]
    proc = run_in_process("evaluate", [*args, f"hydra.run.dir={run_dir}", "logger=none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "val" and "val/acc" in metrics and "test/acc" not in metrics
    assert re.search(r"^val/acc: ", proc.stdout, re.M) and f"committee member: {second}" in proc.stdout

    models = [load_classifier(str(path))[0] for path in (tiny_ckpt, second)]
    settings = eval_settings(*load_classifier(str(tiny_ckpt)))
    dm = GTSRBDataModule(
        data_dir=str(synthetic_root),
        image_size=IMAGE_SIZE,
        roi_crop=settings["roi_crop"],
        augment=settings["augment"],
        num_workers=0,
        verify=False,
    )
    dm.setup("validate")
    assert metrics["num_images"] == len(dm.val_set) > 0
    assert not {r.track for r in dm.val_set.records} & {r.track for r in dm.train_set.records}
    images, labels = zip(*(dm.val_set.load(i) for i in range(len(dm.val_set))), strict=True)
    batch = torch.from_numpy(np.stack(images))
    with torch.inference_mode():
        probs = [m(batch).softmax(dim=-1) for m in models]
    predictions = [p.argmax(dim=-1) for p in probs]
    assert not torch.equal(predictions[0], predictions[1])  # two opinions: the committee is not one model
    mean = (probs[0] + probs[1]) / 2
    assert metrics["correct"] == int((mean.argmax(dim=-1) == torch.tensor(labels)).sum())
    with open(run_dir / "misclassified.csv") as f:  # each error's class and confidence: the mean's, not one model's
        errors = {r["file"]: r for r in csv.DictReader(f)}
    rows = {Path(r.path).relative_to(dm.index.root).as_posix(): i for i, r in enumerate(dm.val_set.records)}
    assert errors and len(errors) == metrics["num_images"] - metrics["correct"]
    per_track: dict[str, list[int]] = {}  # the track interval from the committee's hits, counted here
    for record, hit in zip(dm.val_set.records, (mean.argmax(dim=-1) == torch.tensor(labels)).tolist(), strict=True):
        per_track.setdefault(record.track, [0, 0])[0] += int(hit)
        per_track[record.track][1] += 1
    assert metrics["tracks"] == len(per_track) > 1
    expected = track_interval({t: (c, n) for t, (c, n) in per_track.items()})
    assert (metrics["val/acc_track_ci_low"], metrics["val/acc_track_ci_high"]) == pytest.approx(expected, abs=1e-12)
    assert "track-bootstrap interval" in proc.stdout
    for file, row in errors.items():
        confidence, pred = mean[rows[file]].max(dim=-1)
        assert int(row["pred_id"]) == int(pred) and float(row["confidence"]) == pytest.approx(
            float(confidence), abs=2e-4
        )

    bad = run_in_process("evaluate", [*args[:1], "split=train", f"data.data_dir={synthetic_root}"])
    assert bad.returncode == 2 and "split='train'; allowed: test, val" in bad.stderr


def _gt_labels(root: Path) -> dict[str, int]:
    """{file name: ClassId} straight from the official test CSV (semicolon-separated)."""
    with open(root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv", newline="") as f:
        return {row["Filename"]: int(row["ClassId"]) for row in csv.DictReader(f, delimiter=";")}


@pytest.mark.slow
def test_misclassified_csv_names_each_error_even_after_a_left_out_image(tiny_ckpt, synthetic_copy, tmp_path):
    """misclassified.csv lists every error once, with the file the loader really read: a corrupt test image left
    out under data.on_bad_image=skip (found once, by verifying, although evaluate sets data.verify=false) must
    not shift the names of the images after it."""
    from alexnet_gtsrb.data.classes import class_name

    images = _test_images(synthetic_copy)
    images[5].write_bytes(b"P6\n999 999\n255\n" + b"\0" * 10)  # corrupt, inside the first batch
    run_dir = tmp_path / "eval_skip"
    args = [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_copy}", f"hydra.run.dir={run_dir}", "logger=none"]
    proc = run_module("evaluate", [*args, "data.on_bad_image=skip", "data.batch_size=16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in (proc.stdout + proc.stderr).splitlines() if "unreadable image(s)" in line]
    assert len(warned) == 1 and f"leaving out 1 unreadable image(s): {images[5]}" in warned[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_images"] == len(images) - 1 == metrics["test_set"]["images"]
    with open(run_dir / "misclassified.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["num_images"] - metrics["correct"] > 10  # an untrained net: many errors
    files = [r["file"] for r in rows]
    assert len(set(files)) == len(files) and images[5].name not in {Path(x).name for x in files}
    truth = _gt_labels(synthetic_copy)
    for r in rows:
        assert (synthetic_copy / r["file"]).is_file()
        assert int(r["true_id"]) == truth[Path(r["file"]).name]  # the label of that very file
        assert int(r["pred_id"]) != int(r["true_id"]) and r["pred_name"] == class_name(int(r["pred_id"]))
        assert 0.0 < float(r["confidence"]) <= 1.0
    per_class = {int(r["class_id"]): int(r["support"]) - int(r["correct"]) for r in metrics["per_class"]}
    for class_id, errors in per_class.items():
        assert sum(int(r["true_id"]) == class_id for r in rows) == errors


# Mirror pairs and flip-symmetric signs, from the class names (not from the module's tables): "Dangerous curve to
# the left/right", "Turn right/left ahead", "Go straight or right/left", "Keep right/left"; right-of-way at the next
# intersection, priority road, yield, no vehicles, no entry, general caution, bumpy road, traffic signals, beware of
# ice/snow, ahead only.
_TWIN = {19: 20, 20: 19, 33: 34, 34: 33, 36: 37, 37: 36, 38: 39, 39: 38}
_SYMMETRIC = (11, 12, 13, 15, 17, 18, 22, 26, 30, 35)


def _ten_view_probabilities(model: torch.nn.Module, plain: list[np.ndarray], size: int) -> np.ndarray:
    """The 10 views of each one-view evaluation image, by hand: the image padded with replicated borders to
    round(size * 256 / 227) px, its centre and 4 corner crops, each with its mirror image; a mirrored view's
    probability goes to the twin class (mirror pairs), to the same class (symmetric signs), nowhere else (the
    other classes keep the un-mirrored probability); renormalised, averaged with the crop's, then over crops."""
    big = round(size * 256 / 227)
    top = (big - size) // 2
    corners = [(top, top), (0, 0), (0, big - size), (big - size, 0), (big - size, big - size)]
    views = []
    for image in plain:
        padded = cv2.copyMakeBorder(image, top, big - size - top, top, big - size - top, cv2.BORDER_REPLICATE)
        crops = [padded[y : y + size, x : x + size] for y, x in corners]
        views += [*crops, *[c[:, ::-1] for c in crops]]
    batch = torch.from_numpy(np.stack(views).copy())
    with torch.inference_mode():
        probs = torch.cat([model(b).double().softmax(dim=-1) for b in batch.split(200)]).numpy()
    out = []
    for i in range(len(plain)):
        total = np.zeros(probs.shape[1])
        for p, pf in zip(probs[10 * i : 10 * i + 5], probs[10 * i + 5 : 10 * i + 10], strict=True):
            q = p.copy()
            for c, twin in _TWIN.items():
                q[c] = pf[twin]
            q[list(_SYMMETRIC)] = pf[list(_SYMMETRIC)]
            total += (p + q / q.sum()) / 2
        out.append(total / 5)
    return np.stack(out)


@pytest.mark.slow
def test_evaluate_ten_views(tiny_ckpt, synthetic_root, tmp_path):
    """``test_views=10`` on a gtsrb-preset checkpoint equals the 10-view average computed here by hand from each
    image's one-view evaluation image: the same correct count, and the same predicted class and confidence for
    every misclassified image (a near-chance checkpoint: most images are in misclassified.csv)."""
    from alexnet_gtsrb.data.datamodule import GTSRBDataModule

    run_dir = tmp_path / "eval_tta"
    proc = run_module(
        "evaluate",
        [
            f"ckpt_path={tiny_ckpt}",
            f"data.data_dir={synthetic_root}",
            f"hydra.run.dir={run_dir}",
            "test_views=10",
            "logger=none",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test views: 5 crops" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_views"] == 10
    assert metrics["num_images"] == len(_test_images(synthetic_root))
    assert not (run_dir / "tensorboard").exists()  # logger=none
    with open(run_dir / "misclassified.csv") as f:
        errors = {r["file"]: r for r in csv.DictReader(f)}

    model, data_hp = load_classifier(str(tiny_ckpt))
    settings = eval_settings(model, data_hp)
    assert settings["augment"]["preset"] == "gtsrb" and settings["image_size"] == IMAGE_SIZE
    dm = GTSRBDataModule(
        data_dir=str(synthetic_root),
        image_size=IMAGE_SIZE,
        roi_crop=settings["roi_crop"],
        augment=settings["augment"],
        num_workers=0,
        verify=False,
    )
    dm.setup("test")  # one view per image: the plain evaluation image
    test_set, correct, wrong = dm.test_set, 0, {}
    plain, labels = zip(*(test_set.load(i) for i in range(len(test_set))), strict=True)
    ten_view = _ten_view_probabilities(model, list(plain), IMAGE_SIZE)
    for record, label, probs in zip(test_set.records, labels, ten_view, strict=True):
        pred = int(probs.argmax())
        correct += pred == label
        if pred != label:
            wrong[Path(record.path).relative_to(dm.index.root).as_posix()] = (pred, float(probs[pred]))
    assert metrics["correct"] == correct
    assert set(errors) == set(wrong)
    for file, (pred, confidence) in wrong.items():
        assert int(errors[file]["pred_id"]) == pred, file
        assert float(errors[file]["confidence"]) == pytest.approx(confidence, abs=2e-4), file


def test_flip_mapping_and_five_crops():
    """The flip table against the class names: a class takes its flipped view's probability from the class
    whose name is its own with left and right swapped; a sign with "left"/"right" in its name and no such twin
    (road narrows on the right) and every digit sign ignore the flipped view."""
    src, mask = _flip_source_index(NUM_CLASSES)

    def swapped(name: str) -> str:
        return name.replace("left", "\0").replace("right", "left").replace("\0", "right")

    twins = {
        c: CLASS_NAMES.index(swapped(n))
        for c, n in enumerate(CLASS_NAMES)
        if swapped(n) != n and swapped(n) in CLASS_NAMES
    }
    assert twins == _TWIN
    for c, name in enumerate(CLASS_NAMES):
        if c in twins:
            assert bool(mask[c]) and CLASS_NAMES[int(src[c])] == swapped(name), name
        elif c in _SYMMETRIC:
            assert bool(mask[c]) and int(src[c]) == c, name
        else:
            assert not bool(mask[c]), f"{name}: a flipped view says nothing valid about it"
    assert not bool(mask[CLASS_NAMES.index("Road narrows on the right")])
    assert not any(bool(mask[c]) for c, n in enumerate(CLASS_NAMES) if "km/h" in n)
    images = torch.arange(2 * 8 * 8 * 3, dtype=torch.int64).reshape(2, 8, 8, 3).to(torch.uint8)
    crops = five_crops(images, 6)
    assert len(crops) == 5 and all(c.shape == (2, 6, 6, 3) for c in crops)
    assert torch.equal(crops[0], images[:, 1:7, 1:7]) and torch.equal(crops[4], images[:, 2:, 2:])


# -- predict -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_json_matches_model_and_skips_bad_files(tiny_ckpt, synthetic_root, tmp_path):
    images = _test_images(synthetic_root)[:4]
    corrupt = tmp_path / "corrupt.ppm"
    corrupt.write_bytes(b"P6\n999 999\n255\n" + b"\0" * 10)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    listed = ",".join(str(p) for p in [images[0], corrupt, *images[1:], text])
    proc = run_module(
        "predict",
        [f"ckpt_path={tiny_ckpt}", f"images=[{listed}]", "format=json", "top_k=3", f"hydra.run.dir={tmp_path}/p"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(p) for p in images]
    assert "corrupt.ppm" in proc.stderr and "notes.txt" in proc.stderr and "Traceback" not in proc.stderr

    model, data_hp = load_classifier(str(tiny_ckpt))
    settings = eval_settings(model, data_hp)
    tf = build_transform(settings["augment"]["preset"], settings["image_size"], False, settings["augment"])
    batch = torch.from_numpy(np.stack([tf(image=decode_rgb(str(p)))["image"] for p in images]))
    with torch.inference_mode():
        probs = model(batch).softmax(dim=-1)
    top = probs.topk(3, dim=-1)
    for r, values, ids in zip(results, top.values, top.indices, strict=True):
        assert len(r["top_k"]) == 3
        assert r["top_k"][0]["class_id"] == int(ids[0])
        assert [t["prob"] for t in r["top_k"]] == pytest.approx(values.tolist(), abs=1e-5)
        assert r["top_k"][0]["name"]


@pytest.mark.slow
def test_predict_folder_table_and_nothing_readable(tiny_ckpt, synthetic_root, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in _test_images(synthetic_root)[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "readme.txt").write_text("hello")
    proc = run_module("predict", [f"ckpt_path={tiny_ckpt}", f"images={folder}", f"hydra.run.dir={tmp_path}/p1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(".ppm") == 2 and "rank" in proc.stdout and "readme.txt" in proc.stderr

    proc = run_module(
        "predict", [f"ckpt_path={tiny_ckpt}", f"images=[{folder / 'readme.txt'}]", f"hydra.run.dir={tmp_path}/p2"]
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


# -- export --------------------------------------------------------------------------------------------------
def _reference(ckpt: Path, batch: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A normalised input batch from real test-image pixels and the PyTorch logits for it."""
    model, data_hp = load_classifier(str(ckpt))
    settings = eval_settings(model, data_hp)
    s = settings["image_size"]
    raw = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = normalize_uint8(raw, settings["mean"], settings["std"])
    with torch.inference_mode():
        return x, model(raw).float(), settings


@pytest.mark.slow
def test_export_onnx_matches_pytorch(tiny_ckpt, tmp_path):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "exported.onnx"
    proc = run_module(
        "export", [f"ckpt_path={tiny_ckpt}", "format=onnx", f"output={out}", f"hydra.run.dir={tmp_path}/e"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    x, ref, settings = _reference(tiny_ckpt, batch=5)  # the export used batch 2: the batch axis is dynamic
    assert json.loads(meta["mean"]) == pytest.approx(settings["mean"])
    assert json.loads(meta["std"]) == pytest.approx(settings["std"])
    assert int(meta["image_size"]) == IMAGE_SIZE and len(json.loads(meta["class_names"])) == NUM_CLASSES
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert got.shape == (5, NUM_CLASSES)
    assert float((got - ref).abs().max()) <= 1e-4


@pytest.mark.slow
def test_export_torchscript_matches_pytorch(tiny_ckpt, tmp_path):
    run_dir = tmp_path / "e"
    proc = run_module("export", [f"ckpt_path={tiny_ckpt}", "format=torchscript", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(run_dir / "model.pt"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["image_size"] == str(IMAGE_SIZE)
    x, ref, _ = _reference(tiny_ckpt, batch=3)
    with torch.no_grad():
        got = scripted(x)
    assert float((got - ref).abs().max()) <= 1e-5


def test_lrn_traces_as_plain_ops():
    """Under tracing the fast LRN takes the plain-ops path, so the traced graph reproduces eager outputs.

    Traced through the chunked kernel, the graph would hold one opaque Python op (no ``aten::pow``) that
    ``torch.jit.save`` and the ONNX exporter cannot serialise. The traced input is conv1-sized (several chunks).
    """
    from alexnet_gtsrb.models.lrn import LRN

    lrn = LRN(5, 1e-4, 0.75, 2.0)
    x = torch.randn(2, 96, 55, 55) * 10
    traced = torch.jit.trace(lrn, (x,), check_trace=False)
    assert "aten::pow" in str(traced.graph)  # lrn_composite, not the opaque kernel
    y = torch.randn(4, 96, 7, 7) * 10  # another shape: nothing was baked in
    torch.testing.assert_close(traced(y), lrn(y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traced(y), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(y), rtol=1e-5, atol=1e-6)

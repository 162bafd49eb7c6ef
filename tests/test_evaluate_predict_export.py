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
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.data.io import decode_rgb
from alexnet_gtsrb.data.transforms import build_transform, normalize_uint8
from alexnet_gtsrb.evaluation.tta import _flip_source_index, five_crops
from alexnet_gtsrb.inference import eval_settings, load_classifier
from tests.helpers import CONF, read_event_tags, run_module

IMAGE_SIZE = 67


@pytest.fixture(scope="module")
def tiny_ckpt(synthetic_root, tmp_path_factory) -> Path:
    """last.ckpt of a 2-batch demo run at 67 px (BatchNorm + LRN), trained in-process once per module."""
    from alexnet_gtsrb.train import train

    out = tmp_path_factory.mktemp("train_run")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
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
    finally:
        GlobalHydra.instance().clear()
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
    assert metrics["tta"] is False and metrics["views_per_image"] == 1

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
    assert len(md) == 2 + NUM_CLASSES + 1 and md[0].startswith("| class | name |") and "macro average" in md[-1]
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


def _gt_labels(root: Path) -> dict[str, int]:
    """{file name: ClassId} straight from the official test CSV (semicolon-separated)."""
    with open(root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv", newline="") as f:
        return {row["Filename"]: int(row["ClassId"]) for row in csv.DictReader(f, delimiter=";")}


@pytest.mark.slow
def test_misclassified_csv_names_each_error_even_after_a_skipped_image(tiny_ckpt, synthetic_copy, tmp_path):
    """misclassified.csv lists every error once, with the file the loader really read: a test image that turns
    unreadable after indexing (skipped, not verified up front) must not shift the names of the images after it."""
    from alexnet_gtsrb.data.classes import class_name

    images = _test_images(synthetic_copy)
    images[5].write_bytes(b"P6\n999 999\n255\n" + b"\0" * 10)  # corrupt, inside the first batch
    run_dir = tmp_path / "eval_skip"
    args = [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_copy}", f"hydra.run.dir={run_dir}", "logger=none"]
    proc = run_module("evaluate", [*args, "data.verify=false", "data.on_bad_image=skip", "data.batch_size=16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["skipped_images"] == 1 and metrics["num_images"] == len(images) - 1
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


@pytest.mark.slow
def test_evaluate_tta(tiny_ckpt, synthetic_root, tmp_path):
    run_dir = tmp_path / "eval_tta"
    proc = run_module(
        "evaluate",
        [
            f"ckpt_path={tiny_ckpt}",
            f"data.data_dir={synthetic_root}",
            f"hydra.run.dir={run_dir}",
            "tta=true",
            "logger=none",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tta: 5 crops" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["tta"] is True and metrics["views_per_image"] == 10
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["num_images"] == len(_test_images(synthetic_root))
    assert not (run_dir / "tensorboard").exists()  # logger=none


def test_flip_mapping_and_five_crops():
    src, mask = _flip_source_index(NUM_CLASSES)
    assert (int(src[19]), int(src[20]), int(src[38]), int(src[39])) == (20, 19, 39, 38)
    assert bool(mask[13]) and int(src[13]) == 13  # yield: flip-invariant
    assert not bool(mask[1]) and not bool(mask[14])  # 30 km/h, stop: the flipped view is not used
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

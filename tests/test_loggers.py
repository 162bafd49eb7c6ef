"""Loggers beyond TensorBoard: ``logger=csv``, ``logger=mlflow`` (one store under the logs folder), ``logger=many``.

One short real training per logger choice, in-process (experiment=demo at 67 px on the tiny synthetic tree, 2
epochs of 3 batches); each store is read back with its own reader: the csv module for ``metrics.csv``, MLflow's
client for the MLflow store, TensorBoard's EventAccumulator (``run_folder.read_events``) for the event files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.report import write_report
from alexnet_gtsrb.run_folder import epoch_table, read_metrics_csv, read_scalars
from tests.helpers import read_event_tags, tiny_overrides


def _train(compose_cfg, synthetic_root: Path, logger: str, name: str = "") -> tuple[Path, dict[str, float], Any]:
    """Train 2 epochs of 3 batches with ``logger=<logger>``; returns the run folder, the metrics and the config.
    ``name``: a run folder of that name beside the default one (same logs folder)."""
    from alexnet_gtsrb.train import train

    overrides = [*tiny_overrides(synthetic_root), "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    cfg = compose_cfg([*overrides, f"logger={logger}"])
    if name:
        cfg = compose_cfg([*overrides, f"logger={logger}", f"paths.output_dir={Path(cfg.paths.output_dir) / name}"])
    metrics, _ = train(cfg)
    return Path(cfg.paths.output_dir), metrics, cfg


def _metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    files = sorted(run_dir.glob("csv/**/metrics.csv"))
    assert [f.relative_to(run_dir).as_posix() for f in files] == ["csv/version_0/metrics.csv"]
    with files[0].open(newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    """The values of one metric, in the order logged (rows without it skipped)."""
    return [float(r[name]) for r in rows if r.get(name)]


def _lr_tag(names) -> str:
    """The learning-rate tag the per-epoch table uses: LearningRateMonitor's first (``lr-AdamW/no_decay``)."""
    return sorted(n for n in names if n.startswith("lr-"))[0]


def _best_checkpoint_name(run_dir: Path) -> str:
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    assert best and Path(best).is_file()
    return Path(best).name


@pytest.mark.slow
def test_csv_logger_writes_metrics_csv_and_the_report_reads_it(compose_cfg, synthetic_root, tmp_path):
    run_dir, metrics, cfg = _train(compose_cfg, synthetic_root, "csv")
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlruns").exists()
    rows = _metrics_csv(run_dir)
    val_rows = [r for r in rows if r.get("val/acc")]
    assert [int(r["epoch"]) for r in val_rows] == [0, 1]
    assert _column(rows, "val/acc")[-1] == pytest.approx(metrics["val/acc"])
    assert max(_column(rows, "val/acc")) == pytest.approx(metrics["val/acc_best"])
    assert _column(rows, "test/acc") == pytest.approx([metrics["test/acc"]])
    lr_tag = _lr_tag(rows[0])
    assert len(_column(rows, "train/loss")) == 2 and len(_column(rows, lr_tag)) == 2
    assert all(float(r["wall_time"]) > 0 for r in rows)
    hparams = yaml.safe_load((run_dir / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["config"]["optimizer"]["lr"] == cfg.optimizer.lr and hparams["batch_size_global"] == 16

    # the report of a run folder with metrics.csv and no tensorboard/: the same per-epoch table
    written = write_report(run_dir, tmp_path / "report")
    assert set(written) == {"curves.csv", "curves.png", "conv1.png"}
    with written["curves.csv"].open(newline="") as f:
        curves = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in curves] == [1, 2]
    for column, metric in [("val_acc", "val/acc"), ("val_loss", "val/loss"), ("train_acc", "train/acc"),
                           ("train_loss", "train/loss"), ("lr", lr_tag)]:  # fmt: skip
        assert [float(r[column]) for r in curves] == pytest.approx(_column(rows, metric)), column
    minutes = [float(r["minutes"]) for r in curves]
    assert 0 <= minutes[0] <= minutes[1]


@pytest.mark.slow
def test_mlflow_logger_writes_runs_to_one_shared_store_with_the_figures(compose_cfg, synthetic_root, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store; the logger sets it too
    run_dir, metrics, cfg = _train(compose_cfg, synthetic_root, "mlflow")
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "csv").exists()
    assert not (run_dir / "mlruns").exists()  # one store for all runs, under the logs folder
    store = Path(cfg.paths.log_dir) / "mlruns"
    client = MlflowClient(f"file:{store}")
    experiment = client.get_experiment_by_name(cfg.task_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert float(params["config/optimizer/lr"]) == cfg.optimizer.lr
    assert params["config/data/image_size"] == "67" and params["batch_size_global"] == "16"

    history = sorted(client.get_metric_history(run.info.run_id, "val/acc"), key=lambda m: m.step)
    values = [m.value for m in history]
    assert len(values) == 2 and history[0].step < history[1].step
    assert values[-1] == pytest.approx(metrics["val/acc"]) and max(values) == pytest.approx(metrics["val/acc_best"])
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert len(client.get_metric_history(run.info.run_id, _lr_tag(run.data.metrics))) == 2

    # the best checkpoint, not last.ckpt, is the uploaded model
    best = _best_checkpoint_name(run_dir)
    stem = best.removesuffix(".ckpt")
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {stem, "figures", "images"} <= top
    files = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, stem)}
    assert files[f"{stem}/{best}"] == (run_dir / "checkpoints" / best).stat().st_size
    assert Path(run.info.artifact_uri.removeprefix("file://")).resolve().is_relative_to(store.resolve())
    # the pictures of the TensorBoard callbacks: a confusion matrix per validation epoch, images with their step
    figures = sorted(a.path for a in client.list_artifacts(run.info.run_id, "figures"))
    assert len(figures) == 2 and all(f.endswith(".png") and "val_confusion_matrix_step" in f for f in figures)
    images = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "images")}
    assert any(i.startswith("samples_train_augmented+step+0") for i in images), images  # (conv1's grid: off here)
    # a second run lands in the same store, comparable in one UI
    second_dir, _, _ = _train(compose_cfg, synthetic_root, "mlflow", name="second")
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert names == {run_dir.name, second_dir.name}
    with pytest.raises(UserError, match="logged to MLflow only, or no logger"):  # no metrics.csv, no events
        write_report(run_dir)


@pytest.mark.slow
def test_many_loggers_write_the_same_values_to_tensorboard_and_csv(compose_cfg, synthetic_root):
    run_dir, metrics, _ = _train(compose_cfg, synthetic_root, "many")
    rows = _metrics_csv(run_dir)
    tags = read_event_tags(run_dir / "tensorboard")
    lr_tags = [n for n in tags if n.startswith("lr-")]
    assert lr_tags and set(lr_tags) <= set(rows[0])
    for name in ("val/acc", "val/loss", "train/acc", "train/loss", "test/acc", *lr_tags):
        assert _column(rows, name) == pytest.approx([e.value for e in tags[name]]), name
    assert _column(rows, "test/acc") == pytest.approx([metrics["test/acc"]])
    assert "samples/train_augmented" in tags  # the image callbacks still write to TensorBoard
    scalars, source = read_scalars(run_dir)
    assert source == run_dir / "csv" and [e.value for e in scalars["val/acc"]] == _column(rows, "val/acc")


def test_metrics_csv_of_a_resumed_run_reads_in_version_order(tmp_path):
    """A run resumed in place adds csv/version_N; without a wall_time column (a plain CSVLogger) no minutes."""
    header = "epoch,lr-SGD,step,train/acc,train/loss,val/acc,val/loss\n"
    for version, epochs in [(0, range(0, 9)), (1, [9]), (10, [10])]:  # version_10 after version_1
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        lines = [f",0.1,{e * 10},,,,\n{e},,{e * 10 + 9},{e / 100},{e},{e / 50},{e + 1}\n" for e in epochs]
        (folder / "metrics.csv").write_text(header + "".join(lines))
    scalars = read_metrics_csv(tmp_path / "csv")
    assert [e.step for e in scalars["val/acc"]] == [e * 10 + 9 for e in range(11)]
    rows = epoch_table(scalars)
    assert [r["epoch"] for r in rows] == list(range(1, 12))
    assert rows[10] == {"epoch": 11, "train_acc": 0.1, "train_loss": 10, "val_acc": 0.2, "val_loss": 11, "lr": 0.1}
    assert read_scalars(tmp_path)[1] == tmp_path / "csv"

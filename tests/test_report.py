"""The report command: curves and conv1 figures of a run folder, from its own event files and checkpoint."""

from __future__ import annotations

import csv

import matplotlib.image as mpimg
import pytest

from alexnet_gtsrb.report import write_report
from tests.helpers import read_event_tags, run_in_process


@pytest.mark.slow
def test_report_writes_curves_and_conv1_matching_the_event_files(tiny_run, tmp_path):
    written = write_report(tiny_run.dir, tmp_path / "report")
    assert set(written) == {"curves.csv", "curves.png", "conv1.png"}
    with written["curves.csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # the fixture trains 2 epochs
    tags = read_event_tags(tiny_run.dir / "tensorboard")
    assert [float(r["val_acc"]) for r in rows] == pytest.approx([e.value for e in tags["val/acc"]])
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([e.value for e in tags["train/loss"]])
    assert all(float(r["lr"]) > 0 and float(r["minutes"]) >= 0 for r in rows)
    for name in ("curves.png", "conv1.png"):
        image = mpimg.imread(written[name])
        assert image.shape[0] > 200 and image.shape[1] > 400, (name, image.shape)


def test_report_on_a_folder_that_is_not_a_run_exits_2(tmp_path):
    proc = run_in_process("report", [str(tmp_path)])
    assert proc.returncode == 2
    assert "is not a run folder" in proc.stderr and "Traceback" not in proc.stderr

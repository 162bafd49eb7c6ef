"""Traceability and readable logs: the provenance every run records, and plain progress lines when stdout is a
file (nohup, SLURM, CI), read while the run is still going."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import albumentations
import hydra
import lightning
import pytest
import torch
import torchvision

from tests.helpers import ROOT, tiny_overrides


def test_metrics_json_records_the_code_versions_command_host_and_device(tiny_run):
    saved = json.loads((tiny_run.dir / "metrics.json").read_text())["provenance"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert saved["git_commit"] == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", saved["git_commit"])
    assert isinstance(saved["git_dirty"], bool)
    assert saved["torch"] == torch.__version__.split("+")[0] or saved["torch"] == torch.__version__
    assert saved["torchvision"].split("+")[0] == torchvision.__version__.split("+")[0]
    assert saved["lightning"] == lightning.__version__ and saved["hydra-core"] == hydra.__version__
    assert saved["albumentations"] == albumentations.__version__
    assert saved["python"] == ".".join(map(str, sys.version_info[:3]))
    assert saved["host"] == socket.gethostname() and saved["device"] == "cpu"
    assert saved["command"]  # the command line that produced the run


@pytest.mark.slow
def test_a_run_whose_stdout_is_a_file_prints_a_plain_line_per_epoch_while_it_runs(tmp_path, synthetic_root):
    """`python -m alexnet_gtsrb.train experiment=demo > run.log`: the log shows each epoch as it ends."""
    log_path, run_dir = tmp_path / "run.log", tmp_path / "run"
    args = [*tiny_overrides(synthetic_root), "trainer.max_epochs=3", "trainer.limit_train_batches=2"]
    args += ["trainer.limit_val_batches=1", "test=false", f"hydra.run.dir={run_dir}", "progress_every_n_steps=1"]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alexnet_gtsrb.train", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 300
            while "epoch 1/3" not in log_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            assert proc.poll() is None  # seen while the run was still going
        finally:
            proc.wait(timeout=300)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    lines = [line for line in text.splitlines() if re.search(r"epoch \d/3 step \d+ \|", line)]
    assert [re.search(r"epoch (\d)/3", line).group(1) for line in lines] == ["1", "2", "3"], lines
    for line in lines:
        assert re.search(r"train/loss \d+\.\d{4} train/acc \d\.\d{4} val/loss \d+\.\d{4} val/acc \d\.\d{4}", line), line
        assert re.search(r"[\d,.]+ img/s \| elapsed \d+m\d\ds \| ETA \d+m\d\ds", line), line
    # mid-epoch lines: where the epoch stands, the loss of the steps since the last line, an ETA from the step rate
    steps = [line for line in text.splitlines() if re.search(r"epoch \d/3 step \d/2 \|", line)]
    assert [re.search(r"epoch (\d)/3 step (\d)/2", line).groups() for line in steps] == [
        (str(e), str(b)) for e in (1, 2, 3) for b in (1, 2)
    ], steps
    for line in steps:
        assert re.search(
            r"\| loss \d+\.\d{4} \(1 steps\) \| [\d,.]+ img/s \| elapsed \d+m\d\ds \| ETA \d+m\d\ds$", line
        ), line
        assert "val/" not in line  # no stale metrics of the previous epoch
    eta = [int(m.group(1)) * 60 + int(m.group(2)) for m in (re.search(r"ETA (\d+)m(\d\d)s", x) for x in steps)]
    assert eta[-1] == 0 and eta[0] > 0  # counts down to the end of the run
    assert "\r" not in text  # no bar redraws in a log file
    # the run's own log file carries the task name (experiment=demo -> demo.log) and the same lines
    assert sum("epoch 3/3 step 6 |" in line for line in (run_dir / "demo.log").read_text().splitlines()) == 1

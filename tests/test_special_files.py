"""Files that are not regular files: a named pipe (FIFO) where a checkpoint, a calibration file,
a ``metrics.csv`` or a TensorBoard event file should be would make ``open`` or ``read`` wait forever, and
``/dev/zero`` would be read until memory runs out. Each is refused in one line naming the file, before anything
is read (:func:`alexnet_gtsrb.utils.files.open_regular_file`).

Every test runs under a hard timeout, so a regression fails here instead of hanging the suite; the
``/dev/zero`` cases also run under a cap on the address space, so a regression fails with ``MemoryError``
instead of exhausting the machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from pathlib import Path

import pytest

from alexnet_gtsrb.errors import BadFileError, UserError
from alexnet_gtsrb.utils.files import check_regular_file, read_text_file
from tests.helpers import run_in_process, tiny_overrides

pytestmark = [
    pytest.mark.timeout(60, func_only=True),  # the shared training run (a fixture) is not timed
    pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs POSIX FIFOs"),
]


@contextlib.contextmanager
def _address_space_cap(extra_bytes: int = 4 * 1024**3):
    """Cap this process's address space at its current size plus ``extra_bytes`` (the soft limit only, restored
    afterwards), so reading ``/dev/zero`` without a size check ends in MemoryError, not in an exhausted machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * resource.getpagesize()
    cap = current + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tiny_run) -> Path:
    return tiny_run.dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def image(synthetic_root) -> Path:
    return next((synthetic_root / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))


# -- the shared check -------------------------------------------------------------------------------------------
def test_the_check_refuses_a_pipe_a_device_a_folder_and_an_oversized_file_and_reads_a_plain_one(tmp_path):
    fifo = _fifo(tmp_path / "calibration.json")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    big = tmp_path / "big.json"
    big.write_text("x" * 101)
    plain = tmp_path / "plain.json"
    plain.write_text('{"ok": 1}')
    cases = [
        (fifo, 10**6, "is not a regular file but a named pipe (FIFO)"),
        (Path("/dev/zero"), 10**6, "is not a regular file but a character device"),
        (folder, 10**6, "is not a regular file but a folder"),
        (big, 100, "of 101 bytes is over the limit of 100"),
    ]
    with _address_space_cap():
        for path, cap, reason in cases:
            for read in (read_text_file, check_regular_file):
                with pytest.raises(BadFileError) as refused:
                    read(path, "calibration file", cap, "Pass another file.")
                message = str(refused.value)
                assert message == f"{path}: calibration file {reason}; refused without reading it. Pass another file."
    assert read_text_file(plain, "calibration file", 100) == '{"ok": 1}'
    assert check_regular_file(plain, "calibration file", 100) == plain
    with pytest.raises(FileNotFoundError):  # callers word a missing file themselves
        read_text_file(tmp_path / "missing.json", "calibration file", 100)


# -- checkpoints: predict, resume, a run folder -----------------------------------------------------------------
def test_a_pipe_as_last_ckpt_ends_predict_and_resume_in_one_line(synthetic_root, image, tmp_path):
    """A folder of checkpoints whose newest ``last.ckpt`` is a pipe (``ckpt_path=<folder>``), the pipe named
    directly, and ``ckpt_path=last`` resuming a run folder whose ``checkpoints/last.ckpt`` is a pipe."""
    folder = tmp_path / "ckpts"
    fifo = _fifo(folder / "last.ckpt")
    for ckpt_path in (folder, fifo):
        line = _one_error_line(
            run_in_process("predict", [f"ckpt_path={ckpt_path}", f"images=[{image}]", f"hydra.run.dir={tmp_path}/p"])
        )
        assert line.startswith(f"error: {fifo}: checkpoint is not a regular file but a named pipe (FIFO)"), line
    run_dir = tmp_path / "run"
    fifo = _fifo(run_dir / "checkpoints" / "last.ckpt")
    resume = run_in_process("train", [*tiny_overrides(synthetic_root), "ckpt_path=last", f"hydra.run.dir={run_dir}"])
    line = _one_error_line(resume)
    assert line.startswith(f"error: {fifo}: checkpoint is not a regular file but a named pipe (FIFO)"), line


def test_a_pipe_as_the_run_folders_checkpoint_is_named_by_report(tiny_run, tmp_path):
    """The run's rule (``last``) picks ``checkpoints/last.ckpt``; a pipe there is refused by name (without the
    check it is taken for "no checkpoint", and the conv1 figure silently left out)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.dir / "tensorboard", run_dir / "tensorboard")
    fifo = _fifo(run_dir / "checkpoints" / "last.ckpt")
    line = _one_error_line(run_in_process("report", [str(run_dir)]))
    assert line.startswith(f"error: {fifo}: checkpoint is not a regular file but a named pipe (FIFO)"), line


# -- calibration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pipe", "/dev/zero"])
def test_predict_refuses_a_calibration_file_that_is_a_pipe_or_dev_zero(ckpt, image, tmp_path, kind):
    calibration = _fifo(tmp_path / "calibration.json") if kind == "pipe" else Path("/dev/zero")
    with _address_space_cap():
        proc = run_in_process(
            "predict",
            [f"ckpt_path={ckpt}", f"images=[{image}]", f"calibration={calibration}", f"hydra.run.dir={tmp_path}/p"],
        )
    line = _one_error_line(proc)
    device = "a named pipe (FIFO)" if kind == "pipe" else "a character device"
    assert line.startswith(f"error: {calibration}: calibration file is not a regular file but {device}"), line


# -- report inputs: metrics.csv, TensorBoard events --------------------------------------------------------------
@pytest.mark.parametrize(
    ("store", "what"),
    [
        ("csv/version_0/metrics.csv", "metrics.csv"),
        ("tensorboard/events.out.tfevents.1700000000.host.1.0", "TensorBoard event file"),
    ],
)
def test_report_refuses_a_pipe_among_the_runs_metrics(tmp_path, store, what):
    fifo = _fifo(tmp_path / "run" / store)
    line = _one_error_line(run_in_process("report", [str(tmp_path / "run")]))
    assert line.startswith(f"error: {fifo}: {what} is not a regular file but a named pipe (FIFO)"), line


def test_run_folder_readers_refuse_a_pipe_as_metrics_json_or_config(tmp_path):
    from alexnet_gtsrb.run_folder import rule_checkpoint

    fifo = _fifo(tmp_path / "metrics.json")
    with pytest.raises(UserError, match="metrics.json is not a regular file but a named pipe"):
        rule_checkpoint(tmp_path)
    fifo.unlink()
    _fifo(tmp_path / ".hydra" / "config.yaml")
    with pytest.raises(UserError, match="run config is not a regular file but a named pipe"):
        rule_checkpoint(tmp_path)


def test_pretrained_weights_that_are_a_pipe_are_refused(tmp_path):
    from alexnet_gtsrb.models.pretrained import file_state_dict

    fifo = _fifo(tmp_path / "alexnet.pth")
    with pytest.raises(UserError, match="model.pretrained weights file is not a regular file but a named pipe"):
        file_state_dict(fifo)


def test_a_pipe_as_a_lock_file_is_refused_instead_of_waiting_for_a_reader(tmp_path, synthetic_root):
    """The run folder's lock and the image cache's lock are opened for writing: a blocking open of a FIFO would
    wait forever for a reader. Both are refused at once; a plain lock file still works."""
    from alexnet_gtsrb.data.cache import _locked
    from alexnet_gtsrb.run_folder import LOCK_NAME, claim_run_folder

    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / LOCK_NAME)
    refused = r"the run folder's lock file is not a regular file but a named pipe"
    with pytest.raises(BadFileError, match=refused), claim_run_folder(run, resuming=False):
        pass
    os.mkfifo(tmp_path / "cache.lock")
    refused = r"the image cache's lock file is not a regular file but a named pipe"
    with pytest.raises(BadFileError, match=refused), _locked(tmp_path / "cache.lock"):
        pass
    with claim_run_folder(tmp_path / "fresh", resuming=False), _locked(tmp_path / "plain.lock"):
        assert (tmp_path / "fresh" / LOCK_NAME).read_text() == str(os.getpid())
    r = run_in_process("train", [*tiny_overrides(synthetic_root), f"hydra.run.dir={run}"])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and LOCK_NAME in errors[0], r.stderr[-1500:]

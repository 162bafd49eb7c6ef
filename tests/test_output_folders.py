"""Where outputs go: the run folder is checked before Hydra creates it, and a full or read-only disk while a
report is written is one line, with no report that looks complete (``metrics.json`` is written last, atomically).
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import run_in_process


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _refused(r, fragment: str) -> None:
    errors = _errors(r.stderr)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and fragment in errors[0], r.stderr[-2000:]


def test_an_empty_logs_variable_is_refused_instead_of_writing_at_the_root(monkeypatch):
    task = f"probe_{uuid.uuid4().hex[:8]}"  # the folder it would make at the root: /<task>/runs/<time>
    monkeypatch.setenv("ALEXNET_GTSRB_LOGS", "")
    try:
        r = run_in_process("evaluate", ["ckpt_path=never-read.ckpt", f"task_name={task}"])
        _refused(r, "paths.log_dir is empty (is ALEXNET_GTSRB_LOGS set to an empty value?)")
        assert not Path(f"/{task}").exists()
    finally:
        if Path(f"/{task}").is_dir():
            import shutil

            shutil.rmtree(f"/{task}")


@pytest.mark.parametrize("task", ["../../escape", "..", "a/b", " "])
def test_a_task_name_with_a_path_in_it_is_refused(tmp_path, task):
    r = run_in_process("export", ["ckpt_path=never-read.ckpt", f"task_name='{task}'", f"paths.log_dir={tmp_path}/logs"])
    _refused(r, "must be a plain name")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_a_file_where_the_run_folder_goes_is_one_line(tmp_path, multirun):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder\n")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    r = run_in_process("predict", [*(["-m"] if multirun else []), "ckpt_path=never-read.ckpt", "images=x.png",
                                   f"{key}={blocker}"])  # fmt: skip
    _refused(r, f"{key}={blocker} is a file, not a folder")
    assert blocker.read_text() == "a file, not a folder\n"


def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_in_process("evaluate", ["ckpt_path=never-read.ckpt", f"hydra.run.dir={tmp_path}/file/run"])
    _refused(r, f"hydra.run.dir={tmp_path}/file/run: cannot create the folder")


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_run):
    return next((tiny_run.dir / "checkpoints").glob("epoch_*.ckpt"))


def _disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_evaluate_on_a_full_disk_is_one_line_and_leaves_no_complete_looking_report(
    tiny_ckpt, synthetic_root, tmp_path, monkeypatch
):
    import alexnet_gtsrb.evaluate as evaluate

    def full(fig, path):
        raise _disk_full(path)

    monkeypatch.setattr(evaluate, "save_figure", full)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"test/acc": 1.0}))  # an earlier report in the same folder
    r = run_in_process("evaluate", [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}", "data.num_workers=0",
                                    f"hydra.run.dir={out}"])  # fmt: skip
    _refused(r, f"cannot write {out / 'confusion_matrix.png'}: No space left on device")
    assert not (out / "metrics.json").exists()  # neither the old report nor a half-written new one


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EROFS])
def test_export_on_a_full_or_read_only_disk_leaves_no_half_written_model(tiny_ckpt, tmp_path, monkeypatch, errno_):
    import alexnet_gtsrb.export as export

    def partial(net, example, path, metadata):
        Path(path).write_bytes(b"\0" * 100)  # part of the model, then the disk gives out
        raise OSError(errno_, os.strerror(errno_), str(path))

    monkeypatch.setattr(export, "export_torchscript", partial)
    r = run_in_process("export", [f"ckpt_path={tiny_ckpt}", "format=torchscript", f"hydra.run.dir={tmp_path}/x"])
    _refused(r, f"{os.strerror(errno_)}. Free space there, or write elsewhere")
    left = [p.name for p in (tmp_path / "x").iterdir() if export.FORMATS["torchscript"] in p.name]
    assert left == []  # neither the model file nor its temporary


def test_a_permission_error_names_the_file_in_one_line():
    from alexnet_gtsrb.utils.cli import _user_error

    assert _user_error(RuntimeError("while writing")) is None  # other errors stay tracebacks: they are bugs
    wrapped = RuntimeError("while writing")
    wrapped.__cause__ = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/report/metrics.json")
    assert str(_user_error(wrapped)) == (
        "/srv/report/metrics.json: Permission denied. Fix its permissions, or write elsewhere (hydra.run.dir=<folder>)."
    )

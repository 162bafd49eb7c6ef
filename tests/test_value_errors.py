"""Issue 28, item 7: the values left that ended in a traceback or in silent wrong output are one line each.

Every case runs the entry point in-process and asserts exit code 2, exactly one ``error:`` line on stderr that
names the key (or file, or folder) and no traceback: predict's ``top_k``/``batch_size``/``device`` and its
Grad-CAM folder, report's ``metrics.csv``/``metrics.json``, ``data.cache_dir``, robustness's counts.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

from tests.helpers import run_in_process


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_run) -> Path:
    return next((tiny_run.dir / "checkpoints").glob("epoch_*.ckpt"))


@pytest.fixture(scope="module")
def test_image(synthetic_root) -> Path:
    return next((synthetic_root / "GTSRB/Final_Test/Images").glob("*.ppm"))


def _one_error(r, *names: str) -> str:
    """The single ``error:`` line of a run that exited 2 without a traceback; it names each of ``names``."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, f"rc {r.returncode}:\n{r.stderr[-2000:]}"
    assert len(errors) == 1, r.stderr[-2000:]
    assert all(name in errors[0] for name in names), errors[0]
    return errors[0]


def _no_model_loaded(monkeypatch, module: str) -> None:
    """The checks run at start-up: loading the checkpoint would fail the test."""
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the bad value was refused")

    for name in (f"alexnet_gtsrb.{module}", "alexnet_gtsrb.inference"):  # robustness loads via inference.eval_context
        monkeypatch.setattr(importlib.import_module(name), "load_classifier", refuse, raising=False)


# -- predict ------------------------------------------------------------------------------------------------------
NO_SUCH_GPU = f"cuda:{torch.cuda.device_count() + 7}"  # cuda:7 on a machine without GPUs


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("top_k=abc", "top_k='abc'"),
        ("top_k=0", "top_k=0"),
        ("top_k=-2", "top_k=-2"),
        ("top_k=true", "top_k=True"),
        ("batch_size=abc", "batch_size='abc'"),
        ("batch_size=0", "batch_size=0"),
        ("batch_size=1.5", "batch_size=1.5"),
        (f"device={NO_SUCH_GPU}", f"device='{NO_SUCH_GPU}'"),
        ("device=meta", "device='meta'"),
        ("device=banana", "device='banana'"),
    ],
)
def test_predict_refuses_bad_values_before_loading_the_model(
    monkeypatch, tiny_ckpt, test_image, tmp_path, override, key
):
    _no_model_loaded(monkeypatch, "predict")
    r = run_in_process(
        "predict", [f"ckpt_path={tiny_ckpt}", f"images=[{test_image}]", override, f"paths.output_dir={tmp_path}"]
    )
    line = _one_error(r, key)
    assert ("allowed: auto, cpu" if key.startswith("device") else "must be a whole number >= 1") in line, line
    assert r.stdout == ""


def test_predict_takes_a_device_that_exists(tiny_ckpt, test_image, tmp_path):
    r = run_in_process("predict", [f"ckpt_path={tiny_ckpt}", f"images=[{test_image}]", "device=cpu", "top_k=50",
                                   "batch_size=1", f"paths.output_dir={tmp_path}"])  # fmt: skip
    assert r.returncode == 0 and r.stdout.count("\n") == 2 + 43, r.stderr[-2000:]  # top_k over 43: every class


def _predict_gradcam(tiny_ckpt, test_image, out: Path):
    return run_in_process(
        "predict", [f"ckpt_path={tiny_ckpt}", f"images=[{test_image}]", "gradcam=true", f"paths.output_dir={out}"]
    )


def test_predict_gradcam_refuses_a_file_where_its_folder_goes(tiny_ckpt, test_image, tmp_path):
    (tmp_path / "gradcam").write_text("not a folder")
    line = _one_error(_predict_gradcam(tiny_ckpt, test_image, tmp_path), f"{tmp_path / 'gradcam'}", "gradcam=true")
    assert "is a file, not a folder" in line and "paths.output_dir" in line, line


def test_predict_gradcam_on_a_full_disk_is_one_line(tiny_ckpt, test_image, tmp_path, monkeypatch):
    """The overlay writer's OSError (ENOSPC from ``Path.write_bytes``, as a full disk gives) names the folder;
    before, cv2.imwrite returned False on a failed write and predict went on as if the overlay were written."""
    real = Path.write_bytes

    def full_disk(self, data):
        if self.parent.name == "gradcam":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    line = _one_error(_predict_gradcam(tiny_ckpt, test_image, tmp_path), f"{tmp_path / 'gradcam'}")
    assert os.strerror(errno.ENOSPC) in line, line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_predict_gradcam_on_a_real_enospc_is_one_line(tiny_ckpt, test_image, tmp_path):
    """A real ENOSPC from the kernel: the overlay's file is a link to /dev/full, whose every write fails so."""
    (tmp_path / "gradcam").mkdir()
    (tmp_path / "gradcam" / f"0000_{test_image.stem}.png").symlink_to("/dev/full")
    line = _one_error(_predict_gradcam(tiny_ckpt, test_image, tmp_path), f"{tmp_path / 'gradcam'}")
    assert os.strerror(errno.ENOSPC) in line, line


# -- report -------------------------------------------------------------------------------------------------------
HEADER = "epoch,step,train/acc,train/loss,val/acc,val/loss\n"


def _run_folder(root: Path, step: str = "9", metrics_json: str | None = None) -> Path:
    run = root / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_text(HEADER + f"0,{step},0.1,3.0,0.2,2.9\n")
    if metrics_json is not None:
        (run / "metrics.json").write_text(metrics_json)
    return run


@pytest.mark.parametrize("step", ["abc", "1e400", "nan", "-3", "2.5"])
def test_report_refuses_a_metrics_csv_step_that_is_not_a_step_number(tmp_path, step):
    run = _run_folder(tmp_path, step=step)
    line = _one_error(run_in_process("report", [str(run)]), str(run / "csv/version_0/metrics.csv"), "step")
    assert repr(step) in line, line
    assert not (run / "report").exists()


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "3", "null", "{not json"])
def test_report_refuses_a_metrics_json_that_is_not_a_json_object(tmp_path, text):
    run = _run_folder(tmp_path, metrics_json=text)
    line = _one_error(run_in_process("report", [str(run)]), str(run / "metrics.json"))
    assert "JSON object" in line, line
    assert not (run / "report").exists()


def test_report_still_reads_a_good_run_folder(tmp_path):
    run = _run_folder(tmp_path, metrics_json='{"test_ckpt": "last"}')
    r = run_in_process("report", [str(run)])
    assert r.returncode == 0 and (run / "report" / "curves.csv").is_file(), r.stderr[-2000:]


# -- data.cache_dir -----------------------------------------------------------------------------------------------
def _evaluate_with_cache(tiny_ckpt, synthetic_root, tmp_path, cache_dir: str):
    return run_in_process("evaluate", [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}", "data.cache=true",
                                       f"data.cache_dir={cache_dir}", "data.num_workers=0",
                                       f"paths.output_dir={tmp_path}/eval"])  # fmt: skip


@pytest.mark.parametrize("where", ["/dev/null", "a_file", "/dev/null/images"])
def test_a_cache_dir_that_is_not_a_folder_is_one_line(tiny_ckpt, synthetic_root, tmp_path, where):
    if where == "a_file":
        where = str(tmp_path / "a_file")
        Path(where).write_text("x")
    line = _one_error(_evaluate_with_cache(tiny_ckpt, synthetic_root, tmp_path, where), f"data.cache_dir={where}")
    assert "data.cache=false" in line, line


def test_a_read_only_cache_dir_is_one_line(tiny_ckpt, synthetic_root, tmp_path):
    """chmod 0o555: the mode has no write bit. As root (these tests' CI) ``os.access`` still allows writing, so
    this exercises the mode check; the next test covers ``os.access`` (another user, a read-only mount)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        line = _one_error(_evaluate_with_cache(tiny_ckpt, synthetic_root, tmp_path, str(folder)), "data.cache_dir")
    finally:
        folder.chmod(0o755)
    assert f"{folder}" in line and "read-only" in line, line
    assert list(folder.iterdir()) == []


def test_a_cache_dir_the_process_may_not_write_is_one_line(tiny_ckpt, synthetic_root, tmp_path, monkeypatch):
    """``os.access`` says no write (a non-root user in a folder of root's, a read-only mount): one line too."""
    folder = tmp_path / "theirs"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real(p, mode, **kw))
    line = _one_error(_evaluate_with_cache(tiny_ckpt, synthetic_root, tmp_path, str(folder)), "data.cache_dir")
    assert "read-only" in line or "not writable" in line, line


def test_a_complete_cache_in_a_read_only_folder_is_still_used(synthetic_root, tmp_path):
    """Only building needs to write: a cache built once and then shared read-only opens without a write."""
    from alexnet_gtsrb.data.cache import open_or_build
    from alexnet_gtsrb.data.gtsrb import index_gtsrb

    records = index_gtsrb(synthetic_root).test[:4]
    built = open_or_build(records, 16, cache_dir=tmp_path / "shared")
    assert built.built
    (tmp_path / "shared").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        again = open_or_build(records, 16, cache_dir=tmp_path / "shared")
    finally:
        (tmp_path / "shared").chmod(0o755)
    assert not again.built and again.path == built.path


# -- robustness ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("max_images=0", "max_images=0"),
        ("max_images=-5", "max_images=-5"),
        ("max_images=abc", "max_images='abc'"),
        ("batch_size=0", "batch_size=0"),
        ("batch_size=abc", "batch_size='abc'"),
        ("gradcam.num_correct=-1", "gradcam.num_correct=-1"),
        ("gradcam.num_wrong=-3", "gradcam.num_wrong=-3"),
        ("adversarial.pgd_steps=100000", "adversarial.pgd_steps=100000"),
        ("adversarial.pgd_steps=abc", "adversarial.pgd_steps='abc'"),
        ("adversarial.num_examples=-1", "adversarial.num_examples=-1"),
        ("corruptions.severities=[0]", "corruptions.severities=[0]"),
    ],
)
def test_robustness_refuses_bad_counts_before_loading_the_model(
    monkeypatch, tiny_ckpt, synthetic_root, tmp_path, override, key
):
    _no_model_loaded(monkeypatch, "robustness")
    r = run_in_process("robustness", [f"ckpt_path={tiny_ckpt}", f"data.data_dir={synthetic_root}", override,
                                      f"paths.output_dir={tmp_path}"])  # fmt: skip
    _one_error(r, key)
    assert not (tmp_path / "metrics.json").exists()

"""Hostile and careless inputs against the entry points, each built by the test itself: crafted checkpoints,
config values, a full disk, a busy run folder, a signal during the test. Every case asserts the exit code, the
one-line message and that nothing happened that should not have (no payload ran, nothing was overwritten).

Data-file cases are in tests/test_adversarial_data.py, download cases in tests/test_adversarial_download.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from alexnet_gtsrb.allowlist import UnsafeCheckpointError, allowed_target
from alexnet_gtsrb.checkpoints import atomic_torch_save, read_checkpoint
from alexnet_gtsrb.errors import UserError
from tests.helpers import run_in_process, run_module, run_train, tiny_overrides


class _Payload:
    """Pickled, it runs ``touch <marker>`` when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _target_payload(marker: Path) -> dict:
    """The issue's exploit: a config that Hydra would build into ``torch.load(<pickle>, weights_only=False)``."""
    blob = pickle.dumps(_Payload(marker))
    return {"_target_": "torch.load", "f": {"_target_": "io.BytesIO", "_args_": [blob]}, "weights_only": False}


@pytest.fixture(scope="module")
def good_ckpt(tiny_run) -> dict:
    """The contents of a real checkpoint of a short run (loaded as plain data)."""
    return torch.load(tiny_run.dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _entry_point_runs(ckpt: Path, run_dir: Path, synthetic_root: Path, tmp_path: Path) -> dict[str, list[str]]:
    image = next((synthetic_root / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))
    return {
        "evaluate": [f"ckpt_path={ckpt}", f"data.data_dir={synthetic_root}", f"hydra.run.dir={tmp_path}/eval"],
        "predict": [f"ckpt_path={ckpt}", f"images=[{image}]", f"hydra.run.dir={tmp_path}/pred"],
        "export": [f"ckpt_path={ckpt}", f"output={tmp_path}/m.onnx", f"hydra.run.dir={tmp_path}/exp"],
        "report": [str(run_dir), str(tmp_path / "report")],
        "train": [*tiny_overrides(synthetic_root), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/resume"],
    }


def _crafted_run(tiny_run, tmp_path: Path, contents: dict) -> tuple[Path, Path]:
    """A copy of a real run folder whose checkpoints are replaced by ``contents``."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.dir / "tensorboard", run_dir / "tensorboard")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(contents, ckpt)
    return run_dir, ckpt


# -- the hole: code execution through a _target_ in a checkpoint ---------------------------------------------
def test_the_payload_is_live_when_built_without_the_check(tmp_path):
    """Proof that the crafted config really runs code when Hydra builds it: the allowlist is what stops it."""
    marker = tmp_path / "pwned"
    with pytest.raises(Exception, match="magic number"):  # torch.load unpickles (runs) it, then complains
        instantiate(_target_payload(marker))
    assert marker.exists()


def test_a_target_outside_the_allowlist_is_refused_by_every_entry_point(tiny_run, good_ckpt, synthetic_root, tmp_path):
    marker = tmp_path / "pwned"
    crafted = json.loads(json.dumps(good_ckpt["hyper_parameters"]))
    crafted["net"]["conv_dropout"] = _target_payload(marker)
    run_dir, ckpt = _crafted_run(tiny_run, tmp_path, {**good_ckpt, "hyper_parameters": crafted})
    for module, args in _entry_point_runs(ckpt, run_dir, synthetic_root, tmp_path).items():
        proc = run_in_process(module, args)
        assert proc.returncode == 2, (module, proc.stderr[-3000:])
        line = _one_error_line(proc)
        assert "net.conv_dropout._target_='torch.load'" in line and "refused" in line, (module, line)
        assert not marker.exists(), f"{module} ran the payload"
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("optimizer", {"_target_": "builtins.eval", "_args_": ["1"]}),
        ("scheduler", {"_target_": "torch.optim.lr_scheduler.LambdaLR", "lr_lambda": {"_target_": "os.getcwd"}}),
        ("net", {"_target_": "alexnet_gtsrb.models.alexnet.AlexNet", "init": "${oc.decode:'{_target_: os.getcwd}'}"}),
        ("optimizer", {"_target_": "torch.optim.Optimizer.load_state_dict"}),
    ],
)
def test_nested_targets_and_interpolations_are_refused_before_anything_is_built(good_ckpt, tmp_path, where, value):
    crafted = {**good_ckpt, "hyper_parameters": {**good_ckpt["hyper_parameters"], where: value}}
    path = tmp_path / "crafted.ckpt"
    torch.save(crafted, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused"):
        read_checkpoint(path)


def test_the_allowlist_admits_the_project_torch_optimizers_and_schedulers_only():
    allowed = ["torch.optim.SGD", "torch.optim.AdamW", "torch.optim.lr_scheduler.OneCycleLR"]
    allowed += ["torch.optim.lr_scheduler.ReduceLROnPlateau", "alexnet_gtsrb.models.alexnet.AlexNet"]
    allowed += ["alexnet_gtsrb.schedules.warmup_cosine"]
    refused = ["torch.load", "os.system", "builtins.eval", "torch.optim.Optimizer.zero_grad", "torch.optim.swa_utils"]
    refused += ["torch.optim.lr_scheduler.torch", "alexnet_gtsrb.train.main", "subprocess.run", "torch.optim.sgd.SGD"]
    assert all(allowed_target(t) for t in allowed)
    assert not any(allowed_target(t) for t in refused)


def test_the_datamodule_settings_of_a_checkpoint_may_name_no_target(good_ckpt, tmp_path):
    """evaluate merges the saved augment settings into the data config it instantiates: no target may hide there."""
    data_hp = {**good_ckpt["datamodule_hyper_parameters"], "augment": {"_target_": "os.getcwd"}}
    path = tmp_path / "crafted.ckpt"
    torch.save({**good_ckpt, "datamodule_hyper_parameters": data_hp}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"datamodule_hyper_parameters: refused: augment\._target_"):
        read_checkpoint(path)


# -- files that are not plain-data checkpoints -----------------------------------------------------------------
def test_pickled_truncated_and_foreign_checkpoints_are_one_line_in_predict_and_resume(
    good_ckpt, synthetic_root, tmp_path
):
    import argparse

    pickled = tmp_path / "pickled.ckpt"
    torch.save({**good_ckpt, "extra": argparse.Namespace(a=1)}, pickled)
    truncated = tmp_path / "truncated.ckpt"
    full = io.BytesIO()
    torch.save(good_ckpt, full)
    truncated.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    foreign = tmp_path / "foreign.ckpt"
    state = dict(good_ckpt["state_dict"])
    state["net.classifier.8.weight"] = torch.zeros(10, 4096)  # a 10-class head
    state.pop("net.classifier.8.bias")
    torch.save({**good_ckpt, "state_dict": state}, foreign)
    expected = {
        pickled: "not a plain-data checkpoint",
        truncated: "cannot be read as a PyTorch checkpoint",
        foreign: "do not fit this model",
    }
    image = next((synthetic_root / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))
    for path, message in expected.items():
        resume = run_in_process(
            "train", [*tiny_overrides(synthetic_root), f"ckpt_path={path}", f"hydra.run.dir={tmp_path}/r"]
        )
        predict = run_in_process("predict", [f"ckpt_path={path}", f"images=[{image}]", f"hydra.run.dir={tmp_path}/p"])
        for proc in (resume, predict):
            assert proc.returncode == 2, proc.stderr[-2000:]
            line = _one_error_line(proc)
            assert str(path) in line and message in line, line
    foreign_line = _one_error_line(run_in_process("train", [*tiny_overrides(synthetic_root), f"ckpt_path={foreign}"]))
    assert "classifier.8.weight (10, 4096) vs the model's (43, 4096)" in foreign_line
    assert "net.classifier.8.bias" in foreign_line


def test_nan_weights_are_refused_naming_the_tensor(good_ckpt, tmp_path):
    from alexnet_gtsrb.inference import load_classifier

    state = dict(good_ckpt["state_dict"])
    state["net.features.0.weight"] = state["net.features.0.weight"].clone()
    state["net.features.0.weight"][0, 0, 0, 0] = float("inf")
    path = tmp_path / "nan.ckpt"
    torch.save({**good_ckpt, "state_dict": state}, path)
    with pytest.raises(UserError, match=r"tensor 'net\.features\.0\.weight' holds NaN/inf"):
        load_classifier(str(path))


# -- config values (the bad-value cases are in tests/test_reliability.py's parametrized test) ------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "needed"),
    [
        (["trainer.max_epochs=3"], 18),  # more epochs: 6 + 2 x 6
        (["trainer.max_epochs=2", "trainer.limit_train_batches=3"], 9),  # fewer batches: 6 + 3 (Lightning: 6)
        (["trainer.max_epochs=2", "data.batch_size=128", "trainer.limit_train_batches=null"], 8),  # 6 + 2
    ],
    ids=["max_epochs", "limit_train_batches", "batch_size"],
)
def test_resuming_one_cycle_past_its_length_is_refused_at_start(tmp_path, synthetic_root, change, needed):
    """The one-cycle schedule of a 1-epoch, 6-step run is 6 steps long. A resume that would take more steps
    stops before training with one line: more epochs, or more epochs at fewer batches each (a smaller
    limit_train_batches or a larger data.batch_size), which Lightning's estimate (epochs x current batches)
    lets through, to fail later with torch's "Tried to step N times"."""
    run_dir = tmp_path / "run"
    common = [*tiny_overrides(synthetic_root, batch_size=32), "trainer.limit_val_batches=1", "test=false"]
    common += [f"hydra.run.dir={run_dir}", "trainer.limit_train_batches=6"]
    first = run_in_process("train", [*common, "trainer.max_epochs=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_in_process("train", [*common, "ckpt_path=last", *change])
    assert again.returncode == 2, again.stderr[-3000:]
    line = _one_error_line(again)
    assert f"scheduler=onecycle: the resumed schedule is 6 steps long, but this run needs {needed}" in line


# -- the run folder --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_in_the_same_folder_refuses_unless_it_resumes(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    common = [*tiny_overrides(synthetic_root), "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
    common += ["trainer.limit_val_batches=1", "test=false", f"hydra.run.dir={run_dir}", "scheduler=step"]
    assert run_train(common).returncode == 0
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    second = run_train(common)
    assert second.returncode == 2 and "already holds a run" in _one_error_line(second)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing overwritten
    # a live run holds the folder's lock: another run (even one resuming it) is refused
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'a'); f.write('4242'); f.flush(); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(run_dir / ".run.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = run_train([*common, "ckpt_path=last"])
        assert busy.returncode == 2 and "is in use by another training run" in _one_error_line(busy)
    finally:
        holder.kill()
        holder.wait()
    resumed = run_train([*common, "trainer.max_epochs=2", "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_during_the_test_names_the_command_that_reruns_it(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(synthetic_root), "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
    args += [f"hydra.run.dir={run_dir}", "+callbacks.signal_at_test._target_=tests.helpers.SignalAtTestStart"]
    proc = run_train(args)
    assert proc.returncode == 143, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM during the test" in line and "Traceback" not in proc.stderr
    command = line.split("Re-run the test with: ", 1)[1]
    assert command.startswith("python -m alexnet_gtsrb.evaluate ckpt_path=") and str(run_dir) in command
    metrics = json.loads((run_dir / "metrics.json").read_text())  # the fit's numbers were saved before the test
    assert "val/acc_best" in metrics["metrics"] and "test/acc" not in metrics["metrics"]
    rerun = run_module("evaluate", [*command.split()[3:], f"hydra.run.dir={tmp_path}/eval"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]


# -- checkpoint files on disk ----------------------------------------------------------------------------------
def test_checkpoints_get_the_mode_a_plain_torch_save_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "a.ckpt")
        torch.save({"a": torch.zeros(2)}, tmp_path / "b.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == (tmp_path / "b.ckpt").stat().st_mode & 0o777 == 0o644


@pytest.fixture()
def small_disk(tmp_path):
    """A real 3 MiB tmpfs (root on Linux); skipped where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_old_file(small_disk):
    target = small_disk / "last.ckpt"
    atomic_torch_save({"w": torch.zeros(1000)}, target)
    before = target.read_bytes()
    with pytest.raises(UserError, match=r"no space left on the device of .*small while writing last\.ckpt"):
        atomic_torch_save({"w": torch.zeros(2_000_000)}, target)  # 8 MB into 3 MiB
    assert target.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_module_refuses_a_non_allowlisted_target_before_building(tmp_path):
    from alexnet_gtsrb.module import GTSRBClassifier

    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpointError):
        GTSRBClassifier(net=_target_payload(marker), optimizer={"_target_": "torch.optim.SGD", "_partial_": True})
    assert not marker.exists()

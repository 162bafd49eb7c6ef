"""End to end: train(cfg) in-process, the real entry point in a subprocess, TensorBoard read back."""

from __future__ import annotations

import os
import time

import pytest
import torch

from alexnet_gtsrb.callbacks.ema import EMAWeights
from alexnet_gtsrb.module import GTSRBClassifier
from alexnet_gtsrb.train import train
from tests.helpers import read_event_tags, run_in_process, run_train, tiny_overrides

SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"}


@pytest.mark.slow
def test_fast_dev_run_in_process(compose_cfg, synthetic_root):
    cfg = compose_cfg(["experiment=demo", "debug=fdr", f"data.data_dir={synthetic_root}", "data.synthetic=null"])
    metrics, objs = train(cfg)
    assert {"train/loss", "val/acc", "test/acc"} <= set(metrics)
    assert objs["trainer"].global_step == 1


@pytest.mark.slow
def test_demo_subprocess_logs_scalars_and_checkpoints(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    proc = run_train(
        [
            "experiment=demo",
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            "trainer.max_epochs=2",
            "data.num_workers=0",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = read_event_tags(run_dir / "tensorboard")
    assert set(tags) >= SCALARS, sorted(tags)
    assert any(t.startswith("lr") for t in tags), sorted(tags)
    assert "filters/conv1" in tags
    assert len(tags["val/acc"]) == 2  # validated every epoch
    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("epoch_") for n in ckpts)
    model = GTSRBClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.hparams.num_classes == 43
    out = model(torch.zeros(2, 99, 99, 3, dtype=torch.uint8))
    assert out.shape == (2, 43)


@pytest.mark.slow
def test_baseline_smoke_on_real_gtsrb(tmp_path, gtsrb_root):
    run_dir = tmp_path / "run"
    proc = run_train(
        [
            "experiment=baseline",
            f"data.data_dir={gtsrb_root}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2",
            "data.batch_size=16",
            "trainer.num_sanity_val_steps=0",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = read_event_tags(run_dir / "tensorboard")
    assert "test/acc" in tags
    # the official test images were all indexed, and test/acc is a fraction of 430
    log_text = "".join(p.read_text() for p in run_dir.glob("*.log"))
    assert "/ 430 test images" in log_text
    acc = tags["test/acc"][-1].value
    assert abs(acc * 430 - round(acc * 430)) < 1e-3
    # said with the number: ../shared/gtsrb's test images are 10 per class of the 12,630 official ones
    subset = "test set: 430 images, 10 per class: not the full 12,630-image official GTSRB test set"
    assert subset + ", not comparable with published full-test results" in proc.stdout
    assert f"test/acc: {acc:.4f} ({round(acc * 430)}/430; 95% Wilson interval " in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_the_in_process_runner_gives_what_the_subprocess_gives(tmp_path):
    """tests.helpers.run_in_process stands in for a subprocess in the error-path tests: for the same command it
    must give the same exit status and the same error line as ``python -m alexnet_gtsrb.train``."""
    args = ["experiment=baseline", "data.data_dir=/nonexistent", f"hydra.run.dir={tmp_path}/run"]
    child, here = run_train(args), run_in_process("train", args)
    assert here.returncode == child.returncode == 2
    errors = [[line for line in p.stderr.splitlines() if line.startswith("error: ")] for p in (child, here)]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors


def test_missing_data_fails_fast_without_traceback(tmp_path):
    start = time.monotonic()
    proc = run_in_process(
        "train", ["experiment=baseline", "data.data_dir=/nonexistent", f"hydra.run.dir={tmp_path}/run"]
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "/nonexistent" in proc.stderr and "GTSRB_ROOT" in proc.stderr and "download" in proc.stderr
    assert elapsed < 60


@pytest.mark.slow
@pytest.mark.parametrize("verify", ["true", "false"])
def test_corrupt_image_stops_training_with_its_name(synthetic_copy, tmp_path, verify):
    """Caught by the header scan before training (verify=true) or when a worker decodes it (verify=false).

    The victim is an official test image: every one of them is evaluated, so the worker path is certain.
    """
    victim = synthetic_copy / "GTSRB" / "Final_Test" / "Images" / "00007.ppm"
    victim.write_bytes(b"P6\n999 999\n255\n" + b"\0" * 10)
    proc = run_in_process(
        "train",
        [
            "experiment=demo",
            f"data.data_dir={synthetic_copy}",
            "data.synthetic=null",
            f"data.verify={verify}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "data.num_workers=1",
            f"hydra.run.dir={tmp_path}/run",
        ],
    )
    assert proc.returncode != 0
    assert victim.name in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_ema_weights_are_validated_checkpointed_tested_and_resumed(compose_cfg, synthetic_root):
    """callbacks=ema: checkpoints hold the average as state_dict and the training weights beside it; the test
    after training runs on the average from the checkpoint of the test_ckpt rule (default: last.ckpt;
    Lightning's WeightAveraging alone would reload the raw weights there), and a reloaded best checkpoint is
    its average too; a resumed run continues both."""
    common = [
        "experiment=demo",
        "callbacks=ema",
        "callbacks.ema.decay=0.9",
        "scheduler=none",  # one-cycle fixes the step count: a resumed run could not add an epoch
        f"data.data_dir={synthetic_root}",
        "data.synthetic=null",
        "data.image_size=67",
        "data.batch_size=32",
        "data.num_workers=0",
        "trainer.limit_train_batches=3",
    ]
    _, objs = train(compose_cfg([*common, "trainer.max_epochs=2"]))
    ckpt_dir = objs["trainer"].checkpoint_callback.dirpath
    best = objs["trainer"].checkpoint_callback.best_model_path
    last_path = os.path.join(ckpt_dir, "last.ckpt")
    last = torch.load(last_path, map_location="cpu", weights_only=True)
    assert int(last["averaging_state"]["n_averaged"]) == last["global_step"] == 6
    avg, raw = last["state_dict"], last["current_model_state"]
    assert avg.keys() == raw.keys()
    assert any(not torch.equal(avg[k], raw[k]) for k in avg if avg[k].is_floating_point())
    best_avg = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    tested = objs["model"].state_dict()
    assert all(torch.equal(tested[k], avg[k]) for k in avg)  # the test ran on last.ckpt's average
    reloaded = GTSRBClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True).state_dict()
    assert all(torch.equal(reloaded[k], best_avg[k]) for k in best_avg)  # what evaluate/predict/export load

    _, objs = train(compose_cfg([*common, "trainer.max_epochs=3", f"ckpt_path={last_path}", "test=false"]))
    ema = next(c for c in objs["trainer"].callbacks if isinstance(c, EMAWeights))
    assert objs["trainer"].global_step == 9 and int(ema._average_model.n_averaged) == 9  # the average went on


@pytest.mark.slow
def test_early_stopping_is_off_by_default_and_stops_a_stalled_run(compose_cfg, synthetic_root, tmp_path):
    """callbacks.early_stopping: absent from a default run; enabled, it ends a run whose val/acc stops rising."""
    from lightning.pytorch.callbacks import EarlyStopping

    common = [*tiny_overrides(synthetic_root), "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    common += ["test=false", "scheduler=none", "optimizer.lr=1e-12"]  # val/acc cannot move: a stalled run
    _, objs = train(compose_cfg([*common, "trainer.max_epochs=1", f"paths.output_dir={tmp_path}/off"]))
    assert not any(isinstance(cb, EarlyStopping) for cb in objs["trainer"].callbacks)
    enabled = ["callbacks.early_stopping.enabled=true", "callbacks.early_stopping.patience=2"]
    _, objs = train(compose_cfg([*common, "trainer.max_epochs=8", *enabled, f"paths.output_dir={tmp_path}/on"]))
    stopper = next(cb for cb in objs["trainer"].callbacks if isinstance(cb, EarlyStopping))
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val/acc", "max", 2)
    # stopped after `patience` validations without a new best, well before max_epochs
    assert 2 <= stopper.stopped_epoch < 7 and objs["trainer"].current_epoch == stopper.stopped_epoch + 1
    assert stopper.wait_count == 2

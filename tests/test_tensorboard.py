"""TensorBoard beyond loss curves: per-class accuracy, confusion matrix, augmented samples, HPARAMS session.

The run-based tests read back the event files of one short real training (the session fixture ``tiny_run``).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from alexnet_gtsrb.callbacks.tensorboard import (
    HParamsSummary,
    TrainSampleGrid,
    ValClassAccuracy,
    ValConfusionMatrix,
    _flat_scalars,
    class_tag,
    denormalize_to_uint8,
)
from alexnet_gtsrb.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from tests.helpers import read_event_tags

CLASS_PREFIX = "val_class_acc/"
HPARAMS_METRICS = ["val/acc_best", "test/acc", "test/loss"]


# -- units ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
def test_denormalize_gives_back_the_exact_uint8_images(channels_last):
    images = torch.randint(0, 256, (5, 9, 7, 3), dtype=torch.uint8)
    x = normalize_uint8(images, IMAGENET_MEAN, IMAGENET_STD, channels_last)
    assert torch.equal(denormalize_to_uint8(x, IMAGENET_MEAN, IMAGENET_STD), images.permute(0, 3, 1, 2))
    assert torch.equal(denormalize_to_uint8(images, IMAGENET_MEAN, IMAGENET_STD), images.permute(0, 3, 1, 2))


def test_class_tags_are_short_unique_and_numbered():
    tags = [class_tag(c) for c in range(43)]
    assert tags[0] == "00_speed_limit_20km_h" and tags[14] == "14_stop"
    assert len(set(tags)) == 43 and all(len(t) <= 35 and t[:2].isdigit() for t in tags)


def test_flat_scalars_for_the_hparams_plugin():
    flat = _flat_scalars({"a": {"b": 1, "c": None, "d": True}, "e": [1, 2], "f": "x", "g": 0.5})
    assert flat == {"a/b": 1, "a/d": "true", "e": "1,2", "f": "x", "g": 0.5}


def test_callbacks_are_separate_config_entries(compose_cfg):
    cfg = compose_cfg(["experiment=demo"])
    targets = {k: v._target_ for k, v in cfg.callbacks.items()}
    assert targets["train_samples"].endswith(TrainSampleGrid.__name__)
    assert targets["val_confusion_matrix"].endswith(ValConfusionMatrix.__name__)
    assert targets["val_class_accuracy"].endswith(ValClassAccuracy.__name__)
    assert targets["hparams_summary"].endswith(HParamsSummary.__name__)
    assert cfg.callbacks.hparams_summary.wait_for_test is True
    assert compose_cfg(["test=false"]).callbacks.hparams_summary.wait_for_test is False
    assert "val_class_accuracy" not in compose_cfg(["~callbacks.val_class_accuracy"]).callbacks


# -- one real run, read back ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_tags(tiny_run):
    return read_event_tags(tiny_run.dir / "tensorboard")


@pytest.mark.slow
def test_scalars_and_images_are_logged(run_tags):
    tags = run_tags
    assert {"train/acc", "val/acc", "val/loss", "val/acc_best", "test/acc", "test/loss"} <= set(tags), sorted(tags)
    assert any(t.startswith("lr-") for t in tags), sorted(tags)
    assert sum(t.startswith(CLASS_PREFIX) for t in tags) == 43
    # one confusion matrix per validation epoch (not for the sanity check), at val/acc's steps
    assert [e.step for e in tags["val/confusion_matrix"]] == [e.step for e in tags["val/acc"]]
    assert len(tags["val/acc"]) == 2
    conv1 = tags["filters/conv1"]
    assert len(conv1) == 3  # train start + 2 epochs
    (samples,) = tags["samples/train_augmented"]  # once, at train start
    assert samples.step == 0
    assert (samples.width, samples.height) == (8 * (67 + 2) + 2, 4 * (67 + 2) + 2)  # 32 images, 8 per row


@pytest.mark.slow
def test_per_class_accuracy_matches_val_acc(run_tags, tiny_run):
    support = Counter(r.label for r in tiny_run.datamodule.val_set.records)
    assert set(support) == set(range(43))
    class_tags = {int(t[len(CLASS_PREFIX) :][:2]): t for t in run_tags if t.startswith(CLASS_PREFIX)}
    assert sorted(class_tags) == list(range(43))
    total = sum(support.values())
    for val_acc in run_tags["val/acc"]:
        per_class = {}
        for c, tag in class_tags.items():
            (event,) = [e for e in run_tags[tag] if e.step == val_acc.step]
            assert 0.0 <= event.value <= 1.0
            per_class[c] = event.value
        weighted = sum(per_class[c] * support[c] for c in per_class) / total
        assert weighted == pytest.approx(val_acc.value, abs=1e-6)


@pytest.mark.slow
def test_one_hparams_session_with_the_final_metrics(tiny_run, run_tags):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tiny_run.dir / "tensorboard"))
    mux.Reload()
    content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    assert list(content) == ["."]  # one run: the event folder itself, no add_hparams sub-run
    tags = content["."]
    assert {metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG} <= set(tags)

    start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
    hp = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    assert hp["model/variant"] == "paper" and hp["model/batch_norm"] == "true" and hp["model/lrn"] == "false"
    assert hp["image_size"] == 67 and hp["data/batch_size"] == 32 and hp["data/augment"] == "gtsrb"
    assert hp["optimizer"] == "AdamW" and hp["optimizer/lr"] == pytest.approx(2e-3)
    assert hp["scheduler"] == "OneCycleLR" and hp["trainer/max_epochs"] == 2 and hp["seed"] == 42
    assert hp["trainer/precision"] == "32-true" and hp["task_name"] == "demo"
    assert hp["data/class_balance"] == 0.0 and "ema/decay" not in hp  # demo: plain shuffling, no averaging
    # provenance: the same record as metrics.json's, so a number in the HPARAMS table traces back to code
    saved = json.loads((tiny_run.dir / "metrics.json").read_text())["provenance"]
    for key in ("git_commit", "torch", "lightning", "hydra-core", "albumentations", "host", "device", "command"):
        assert hp[f"provenance/{key}"] == str(saved[key]), key

    experiment = metadata.parse_experiment_plugin_data(tags[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == HPARAMS_METRICS
    # The HPARAMS tab reads each metric's value from the run's last scalar of that tag: the final numbers.
    for name in HPARAMS_METRICS:
        assert run_tags[name][-1].value == pytest.approx(tiny_run.metrics[name])
    assert "hp_metric" not in run_tags

"""The DataModule end to end on real files: batches as the model sees them, and auditable splits."""

from __future__ import annotations

import pytest
import torch

from alexnet_gtsrb.data.datamodule import GTSRBDataModule
from alexnet_gtsrb.errors import ConfigError


@pytest.mark.parametrize("preset", ["none", "gtsrb", "paper"])
def test_training_batch_is_normalised_float(synthetic_root, preset):
    dm = GTSRBDataModule(
        str(synthetic_root),
        image_size=67,
        batch_size=8,
        num_workers=0,
        augment={"preset": preset},
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (8, 67, 67, 3)  # uint8 until the device
    x, y, skipped = dm.on_after_batch_transfer(raw, 0)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 67, 67)
    assert y.dtype == torch.long and y.shape == (8,) and skipped == 0
    assert torch.allclose(x, (raw[0].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25, atol=1e-5)
    assert x.min() >= -2.0 - 1e-5 and x.max() <= 2.0 + 1e-5


def test_splits_are_auditable_records(synthetic_root):
    dm = GTSRBDataModule(str(synthetic_root), image_size=67, num_workers=0, val_fraction=0.34)
    dm.setup("fit")
    train, val, test = dm.train_set.records, dm.val_set.records, dm.test_set.records
    assert {r.track for r in train}.isdisjoint({r.track for r in val})
    assert {r.label for r in train} == {r.label for r in val} == set(range(43))
    assert all(r.track is None for r in test) and len(test) == 43 * 2
    assert sum(dm.class_counts().values()) == len(train)


def test_num_classes_must_match_the_data(synthetic_root):
    dm = GTSRBDataModule(str(synthetic_root), num_classes=10, image_size=67, num_workers=0)
    with pytest.raises(ConfigError, match="data.num_classes=10"):
        dm.setup("fit")


def test_bad_config_values_name_the_key():
    with pytest.raises(ConfigError, match="data.on_bad_image"):
        GTSRBDataModule(on_bad_image="ignore")
    with pytest.raises(ConfigError, match="augment.preset"):
        GTSRBDataModule(augment={"preset": "autoaugment"})

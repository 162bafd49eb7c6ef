"""The DataModule end to end on real files: batches as the model sees them, and auditable splits."""

from __future__ import annotations

from types import SimpleNamespace

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
    x, y = dm.on_after_batch_transfer(raw, 0)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 67, 67)
    assert y.dtype == torch.long and y.shape == (8,)
    assert torch.allclose(x, (raw[0].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25, atol=1e-5)
    assert x.min() >= -2.0 - 1e-5 and x.max() <= 2.0 + 1e-5


def test_paper_training_batch_gets_one_colour_shift_per_image_in_float(synthetic_root):
    """The paper preset's PCA colour noise is added to the training batch after the transfer, unrounded: the
    batch differs from the evaluation normalisation by a constant per image and channel, and only in training."""
    dm = GTSRBDataModule(str(synthetic_root), image_size=67, batch_size=8, num_workers=0, augment={"preset": "paper"})
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    mean, std = torch.tensor(dm.hparams.mean).view(1, 3, 1, 1), torch.tensor(dm.hparams.std).view(1, 3, 1, 1)
    plain = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    dm.trainer = SimpleNamespace(training=False)
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.allclose(x, plain, atol=1e-5)
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    diff = x - plain
    per_image = diff.mean((2, 3), keepdim=True)
    assert (diff - per_image).abs().max() < 1e-4 and per_image.abs().min() > 0
    assert len({tuple(per_image[i].flatten().tolist()) for i in range(8)}) == 8
    grey = per_image * 255 * std  # shifts in grey levels, not whole numbers
    assert ((grey - grey.round()).abs() > 0.01).any()


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


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_class_balance_draws_classes_as_count_to_the_one_minus_alpha(gtsrb_root, alpha):
    """Real GTSRB (102-1,665 images a class): one epoch of sampler draws follows count ** (1 - alpha)."""
    torch.manual_seed(0)
    dm = GTSRBDataModule(str(gtsrb_root), image_size=67, num_workers=0, verify=False, class_balance=alpha)
    dm.setup("fit")
    loader = dm.train_dataloader()
    counts = dm.class_counts()
    labels = [r.label for r in dm.train_set.records]
    draws = [index for index, _ in loader.sampler]  # (index, augmentation seed) pairs
    if alpha == 0.0:
        assert sorted(draws) == list(range(len(labels)))  # a permutation: every image once
        return
    assert len(draws) == len(labels)  # an epoch is as long as without balancing
    drawn = torch.bincount(torch.tensor([labels[i] for i in draws]), minlength=43).double()
    expected = torch.tensor([counts[c] ** (1 - alpha) for c in range(43)], dtype=torch.double)
    expected *= len(draws) / expected.sum()
    assert torch.all((drawn - expected).abs() < 5 * expected.sqrt() + 1)  # within 5 sigma of the expectation
    rarest, commonest = min(counts, key=counts.get), max(counts, key=counts.get)
    natural_ratio = counts[commonest] / counts[rarest]
    assert drawn[commonest] / drawn[rarest] < natural_ratio ** (1 - alpha) * 1.5 < natural_ratio


def test_class_balance_must_lie_between_0_and_1():
    with pytest.raises(ConfigError, match=r"data.class_balance=1.5 must lie in \[0, 1\]"):
        GTSRBDataModule(class_balance=1.5)

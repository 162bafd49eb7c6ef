"""Augmentation presets, the label-aware flip and on-device normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet_gtsrb.data.classes import CLASS_NAMES
from alexnet_gtsrb.data.dataset import GTSRBDataset
from alexnet_gtsrb.data.gtsrb import index_gtsrb
from alexnet_gtsrb.data.transforms import PRESETS, build_transform, flip_remap, normalize_uint8
from alexnet_gtsrb.errors import ConfigError


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("train", [True, False])
def test_presets_give_uint8_square_images(preset, train):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (41, 37, 3), dtype=np.uint8)
    params = {"preset": preset, "clahe": True}
    out = build_transform(preset, 99, train=train, params=params)(image=image)["image"]
    assert out.shape == (99, 99, 3) and out.dtype == np.uint8


def test_paper_pca_noise_per_item_only_for_per_image():
    """augment.pca=dataset (the default): no colour op per item, the paper's noise is added to the float batch on
    the device (tests/test_pca.py); per_image: albumentations' FancyPCA on each uint8 item."""
    with pytest.raises(ConfigError, match=r"augment.pca='fancy'; allowed: dataset, per_image"):
        build_transform("paper", 99, train=True, params={"pca": "fancy"})
    tf = build_transform("paper", 99, train=True, params={"pca": "per_image"})
    assert [type(t).__name__ for t in tf.transforms][-2:] == ["RandomCrop", "FancyPCA"]
    for params in ({}, {"pca": "dataset"}):
        tf = build_transform("paper", 99, train=True, params=params)
        assert [type(t).__name__ for t in tf.transforms] == ["SmallestMaxSize", "CenterCrop", "RandomCrop"]


def test_eval_pipelines_are_deterministic_and_train_ones_random():
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for preset in PRESETS:
        tf = build_transform(preset, 64, train=False, params={})
        assert np.array_equal(tf(image=image)["image"], tf(image=image)["image"])
    tf = build_transform("gtsrb", 64, train=True, params={"affine_p": 1.0})
    outs = [tf(image=image)["image"] for _ in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_unknown_preset_names_the_key():
    with pytest.raises(ConfigError, match=r"augment.preset='fancy'.*none, gtsrb, paper"):
        build_transform("fancy", 64, train=True)


# What a horizontal flip does to each GTSRB sign, from the signs' meanings (not from alexnet_gtsrb.data.classes).
# Mirror twins: the flip turns one sign into the other.
MIRROR_TWINS_BY_NAME = [
    ("Dangerous curve to the left", "Dangerous curve to the right"),
    ("Turn right ahead", "Turn left ahead"),
    ("Go straight or right", "Go straight or left"),
    ("Keep right", "Keep left"),
]
# Left-right symmetric signs: the flip leaves them as they are.
SYMMETRIC_BY_NAME = [
    "Right-of-way at the next intersection",  # upright cross
    "Priority road",  # diamond
    "Yield",  # inverted triangle
    "No vehicles",  # empty red ring
    "No entry",  # white bar
    "General caution",  # exclamation mark
    "Bumpy road",  # two symmetric bumps
    "Traffic signals",  # vertical traffic light
    "Beware of ice/snow",  # snowflake
    "Ahead only",  # upward arrow
]
# Everything else changes meaning or becomes a sign GTSRB does not have: digits and text (speed limits, stop),
# vehicles and figures drawn facing one way (no passing, trucks, pedestrians, children, bicycles, road work,
# wild animals, slippery road), one-sided signs without a GTSRB twin (double curve, road narrows on the right),
# diagonal "end of" bars and the roundabout's direction of travel.


def _class_id(name: str) -> int:
    assert CLASS_NAMES.count(name) == 1, name
    return CLASS_NAMES.index(name)


def test_flip_remap_on_class_ids_follows_the_sign_names():
    """Every class id: a mirror twin flips to its twin's id, a symmetric sign keeps its id, any other is never
    flipped. The ids are looked up by name, so a wrong id in the module's tables fails here."""
    twin = {}
    for left, right in MIRROR_TWINS_BY_NAME:
        a, b = _class_id(left), _class_id(right)
        twin[a], twin[b] = b, a
    symmetric = {_class_id(name) for name in SYMMETRIC_BY_NAME}
    assert len(twin) == 8 and len(symmetric) == 10 and not symmetric & twin.keys()
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # no two columns alike
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASS_NAMES):
        out, new_label = flip_remap(image, label, rng, p=1.0)
        if label in twin:
            assert new_label == twin[label] and np.array_equal(out, image[:, ::-1]), name
        elif label in symmetric:
            assert new_label == label and np.array_equal(out, image[:, ::-1]), name
        else:
            assert new_label == label and np.array_equal(out, image), name
    keep_right, keep_left = _class_id("Keep right"), _class_id("Keep left")
    flips = sum(flip_remap(image, keep_right, rng, p=0.5)[1] == keep_left for _ in range(400))
    assert 150 < flips < 250  # with p=0.5 about half of the flippable samples flip


@pytest.mark.parametrize(("name", "twin_name"), [("Keep right", "Keep left"), ("Turn left ahead", "Turn right ahead")])
def test_a_flipped_mirror_pair_image_carries_its_twins_label(synthetic_root, name, twin_name):
    """Through the training dataset's label-aware flip: each image of the class comes out either unchanged with
    its own label or mirrored with the twin's label (the twin looked up by name)."""
    label, twin = _class_id(name), _class_id(twin_name)
    records = [r for r in index_gtsrb(str(synthetic_root), "auto").train if r.label == label]
    resize = build_transform("none", 32, train=False)
    plain, flipping = GTSRBDataset(records, resize), GTSRBDataset(records, resize, flip=True)
    torch.manual_seed(0)  # the dataset's flip generator is seeded from torch's seed
    seen = set()
    for i in range(len(records)):
        image, out_label = flipping[i]
        original = plain[i][0].numpy()
        if np.array_equal(image.numpy(), original[:, ::-1]) and not np.array_equal(image.numpy(), original):
            assert out_label == twin
            seen.add("flipped")
        else:
            assert np.array_equal(image.numpy(), original) and out_label == label
            seen.add("kept")
    assert seen == {"flipped", "kept"}  # both cases occur with this seed


def test_normalize_uint8_layout_and_values():
    x = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    y = normalize_uint8(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert y.shape == (2, 3, 5, 6) and y.dtype == torch.float32 and y.is_contiguous()
    expected = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(y, expected, atol=1e-5)
    z = normalize_uint8(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=True)
    assert z.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, z)

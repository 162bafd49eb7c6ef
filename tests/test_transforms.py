"""Augmentation presets, the label-aware flip and on-device normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet_gtsrb.data.classes import CLASS_NAMES, FLIP_INVARIANT, MIRROR_PAIRS
from alexnet_gtsrb.data.pca import RGBPCA
from alexnet_gtsrb.data.transforms import PRESETS, PaperPCANoise, build_transform, flip_remap, normalize_uint8
from alexnet_gtsrb.errors import ConfigError


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("train", [True, False])
def test_presets_give_uint8_square_images(preset, train):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (41, 37, 3), dtype=np.uint8)
    params = {"preset": preset, "clahe": True}
    out = build_transform(preset, 99, train=train, params=params, pca=PCA)(image=image)["image"]
    assert out.shape == (99, 99, 3) and out.dtype == np.uint8


PCA = RGBPCA((0.2, 0.01, 0.001), ((0.58, 0.58, 0.57), (0.76, -0.13, -0.64), (-0.3, 0.81, -0.51)), (0.5,) * 3, 1, 1)


def test_paper_pca_noise_needs_the_training_set_statistics_or_per_image():
    with pytest.raises(ConfigError, match=r"augment.pca=dataset needs the training set's PCA statistics"):
        build_transform("paper", 99, train=True, params={"pca": "dataset"})
    with pytest.raises(ConfigError, match=r"augment.pca='fancy'; allowed: dataset, per_image"):
        build_transform("paper", 99, train=True, params={"pca": "fancy"}, pca=PCA)
    tf = build_transform("paper", 99, train=True, params={"pca": "per_image"})
    assert any(type(t).__name__ == "FancyPCA" for t in tf.transforms)
    tf = build_transform("paper", 99, train=True, params={}, pca=PCA)  # dataset is the default
    assert [t.eigenvalues for t in tf.transforms if isinstance(t, PaperPCANoise)] == [PCA.eigenvalues]


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


def test_flip_remap_on_class_ids():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rng = np.random.default_rng(0)
    mirror = {a: b for a, b in MIRROR_PAIRS} | {b: a for a, b in MIRROR_PAIRS}
    assert mirror[19] == 20 and mirror[33] == 34 and mirror[37] == 36 and mirror[39] == 38
    for label in range(len(CLASS_NAMES)):
        results = [flip_remap(image, label, rng, p=1.0) for _ in range(3)]
        for out, new_label in results:
            if label in FLIP_INVARIANT:
                assert new_label == label and np.array_equal(out, image[:, ::-1])
            elif label in mirror:
                assert new_label == mirror[label] and np.array_equal(out, image[:, ::-1])
            else:  # digits, one-sided signs: never flipped
                assert new_label == label and np.array_equal(out, image)
    # with p=0.5 about half of the flippable samples flip
    flips = sum(flip_remap(image, 19, rng, p=0.5)[1] == 20 for _ in range(400))
    assert 150 < flips < 250


def test_normalize_uint8_layout_and_values():
    x = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    y = normalize_uint8(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert y.shape == (2, 3, 5, 6) and y.dtype == torch.float32 and y.is_contiguous()
    expected = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(y, expected, atol=1e-5)
    z = normalize_uint8(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=True)
    assert z.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, z)

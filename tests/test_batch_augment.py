"""data.augment.on_device: the gtsrb preset's random ops on whole batches, per image, in the transfer hook."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alexnet_gtsrb.data.batch_augment import BatchAugment
from alexnet_gtsrb.data.datamodule import GTSRBDataModule
from alexnet_gtsrb.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from alexnet_gtsrb.errors import ConfigError

OFF = {"affine_p": 0.0, "brightness": 0.0, "contrast": 0.0, "blur_noise_p": 0.0}


def batch(n: int = 16, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def smooth_batch(n: int = 8, size: int = 32) -> torch.Tensor:
    """Images with structure (a bright square on a gradient), so geometry and blur have something to move."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = (x * 4 + y * 2).clamp(0, 200).float()
    img[size // 4 : size // 2, size // 4 : size // 2] = 250
    return img.round().to(torch.uint8)[None, :, :, None].expand(n, size, size, 3).contiguous()


def test_everything_off_is_the_identity_pixel_for_pixel():
    """With every probability 0 the batch still passes grid_sample (identity grid): no pixel may change."""
    x = batch()
    assert torch.equal(BatchAugment(OFF)(x), x)


def test_shape_dtype_and_input_untouched():
    x = batch()
    before = x.clone()
    y = BatchAugment({})(x)
    assert y.shape == x.shape and y.dtype == torch.uint8 and y.is_contiguous()
    assert torch.equal(x, before)
    f = BatchAugment({}).floats(x)
    assert f.shape == (16, 3, 24, 24) and f.dtype == torch.float32 and f.min() >= 0 and f.max() <= 255


def test_reproducible_under_the_torch_seed_and_drawn_per_image():
    x = smooth_batch()  # eight identical images
    aug = BatchAugment({"affine_p": 1.0, "blur_noise_p": 0.0, "brightness": 0.0, "contrast": 0.0})
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert torch.equal(a, b)
    distinct = {a[i].numpy().tobytes() for i in range(a.shape[0])}
    assert len(distinct) == a.shape[0], "each image must get its own affine parameters"


def test_translation_only_moves_the_square_within_the_limit():
    size = 32
    x = smooth_batch(n=32, size=size)
    aug = BatchAugment({**OFF, "affine_p": 1.0, "shift": 0.1, "scale": 0.0, "rotate": 0.0})
    torch.manual_seed(0)
    y = aug(x)

    def centre(img: torch.Tensor) -> tuple[float, float]:
        mask = (img[..., 0] >= 245).float()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        return float(ys.float().mean()), float(xs.float().mean())

    c0 = centre(x[0])
    moves = [tuple(abs(a - b) for a, b in zip(centre(y[i]), c0, strict=True)) for i in range(y.shape[0])]
    assert max(max(m) for m in moves) <= 0.1 * size + 1  # at most 10% of the size per axis (+ rounding)
    assert max(max(m) for m in moves) >= 0.05 * size  # and the draws do reach a good part of it


def test_brightness_contrast_follow_albumentations_formula():
    """alpha * x + 255 * beta with alpha in 1 +- contrast, beta in +- brightness, on about half of the images."""
    x = torch.full((400, 4, 4, 3), 100, dtype=torch.uint8)
    aug = BatchAugment({**OFF, "brightness": 0.2, "contrast": 0.2})
    torch.manual_seed(1)
    y = aug(x).float()[:, 0, 0, 0]
    changed = (y != 100).float().mean().item()
    assert 0.4 < changed < 0.6  # p = 0.5
    lo, hi = 100 * 0.8 - 0.2 * 255, 100 * 1.2 + 0.2 * 255
    assert lo - 1 <= y.min() and y.max() <= hi + 1
    per_image = aug(x).float()  # a constant image stays constant: one alpha and beta per image
    assert (per_image == per_image[:, :1, :1, :1]).all()


def test_blur_or_noise_share_and_effects():
    x = smooth_batch(n=400, size=16)
    aug = BatchAugment({**OFF, "blur_noise_p": 1.0})
    torch.manual_seed(2)
    y = aug(x).float()
    diff = (y - x.float()).abs().flatten(1)
    changed = diff.amax(1) > 0
    assert changed.float().mean() > 0.95
    # noise changes flat areas too; a blur leaves the flat inside of the square alone
    flat = (y[:, 5:7, 5:7] - x[:, 5:7, 5:7].float()).abs().flatten(1).amax(1)
    noisy = flat > 0
    assert 0.35 < noisy.float().mean() < 0.65  # one of two, equally likely
    std = (y[noisy] - x[noisy].float()).flatten(1).std(1)
    assert std.min() > 0.015 * 255 and std.max() < 0.07 * 255  # 255 x U(0.02, 0.06), minus clipping


def test_gaussian_blur_matches_opencv():
    import cv2

    from alexnet_gtsrb.data.batch_augment import _gaussian_blur3

    x = batch(n=3, size=20).permute(0, 3, 1, 2).float().contiguous()
    sigma = torch.tensor([0.3, 0.6, 1.0])
    y = _gaussian_blur3(x, sigma)
    for i in range(3):
        img = x[i].permute(1, 2, 0).numpy()
        ref = cv2.GaussianBlur(img, (3, 3), float(sigma[i]), borderType=cv2.BORDER_REFLECT_101)
        assert torch.allclose(y[i].permute(1, 2, 0), torch.from_numpy(ref), atol=1e-3)


def test_rejects_a_non_uint8_batch():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment({})(torch.zeros(2, 8, 8, 3))


def _dm(root, tmp_path, **augment) -> GTSRBDataModule:
    aug = {"preset": "gtsrb", "clahe": True, "on_device": True, **augment}
    return GTSRBDataModule(
        data_dir=str(root), image_size=32, num_workers=0, cache=True, cache_dir=str(tmp_path), augment=aug
    )


def test_on_device_needs_the_gtsrb_preset(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="on_device=false"):
        GTSRBDataModule(data_dir=str(synthetic_root), augment={"preset": "paper", "on_device": True})


def test_datamodule_augments_training_batches_only(synthetic_root, tmp_path):
    """Items come from the cache untouched (training and evaluation alike); the transfer hook augments a batch
    only while the trainer trains, and normalises every batch the same way."""
    dm = _dm(synthetic_root, tmp_path)
    dm.setup("fit")
    assert dm.train_set.transform is None and dm.val_set.transform is None
    images = torch.stack([dm.train_set[i][0] for i in range(8)])
    labels = torch.zeros(8, dtype=torch.long)
    plain = normalize_uint8(images, IMAGENET_MEAN, IMAGENET_STD)
    for training, expect_equal in ((False, True), (True, False)):
        dm.trainer = SimpleNamespace(training=training)  # what the hook reads
        torch.manual_seed(0)
        out, _ = dm.on_after_batch_transfer((images, labels), 0)
        assert out.shape == plain.shape and out.dtype == torch.float32
        assert torch.equal(out, plain) == expect_equal
    dm.trainer = None
    out, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(out, plain)


def test_everything_off_on_device_equals_the_per_item_pipeline_off(synthetic_root, tmp_path):
    """No random op drawn: the normalised training batch equals the evaluation pipeline's (cached) items."""
    dm = _dm(synthetic_root, tmp_path, **OFF)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(training=True)
    images = torch.stack([dm.train_set[i][0] for i in range(6)])
    out, _ = dm.on_after_batch_transfer((images, torch.zeros(6, dtype=torch.long)), 0)
    ref = normalize_uint8(images, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(out, ref, atol=1e-5)
    assert math.isclose(float(out.mean()), float(ref.mean()), abs_tol=1e-5)

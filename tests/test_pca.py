"""The paper's PCA colour augmentation: training-set statistics (data/pca.py), their cache, the per-image shift
(transforms.PaperPCANoise), and the DataModule computing them for the paper preset."""

from __future__ import annotations

import pickle

import albumentations as A
import numpy as np
import pytest

from alexnet_gtsrb.data.datamodule import GTSRBDataModule
from alexnet_gtsrb.data.pca import BESIDE_DATA, RGBPCA, cached_rgb_pca, rgb_pca
from alexnet_gtsrb.data.transforms import PaperPCANoise, build_transform


def _numpy_pca(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255.0
    cov = np.cov(pixels, rowvar=False, bias=True)  # population covariance, as documented
    vals, vecs = np.linalg.eigh(cov)
    return vals[::-1], vecs[:, ::-1]


def _assert_matches_numpy(stats: RGBPCA, images: list[np.ndarray]) -> None:
    vals, vecs = _numpy_pca(images)
    np.testing.assert_allclose(stats.eigenvalues, vals, rtol=1e-9, atol=1e-12)
    for i in range(3):  # eigenvectors up to sign
        p = np.asarray(stats.eigenvectors[i])
        assert abs(abs(p @ vecs[:, i]) - 1) < 1e-9
        assert abs(np.linalg.norm(p) - 1) < 1e-12
    assert stats.num_pixels == sum(im.shape[0] * im.shape[1] for im in images)


def test_rgb_pca_equals_numpy_on_random_images():
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.2, 0.1], [0.3, 0.8, 0.0], [0.1, 0.4, 0.6]])
    images = [np.clip(rng.normal(0, 40, (h, w, 3)) @ mix + 120, 0, 255).astype(np.uint8) for h, w in [(5, 7), (9, 4)]]
    stats = rgb_pca(iter(images))
    _assert_matches_numpy(stats, images)
    assert stats.eigenvalues[0] >= stats.eigenvalues[1] >= stats.eigenvalues[2] > 0


def test_datamodule_pca_equals_numpy_on_the_training_split_pixels(synthetic_root):
    dm = GTSRBDataModule(str(synthetic_root), image_size=67, num_workers=0, augment={"preset": "paper"})
    dm.setup("fit")
    assert dm.pca is not None and dm.pca_file is not None and dm.pca_file.is_file()
    base = A.Compose(build_transform("paper", 67, train=False).transforms[:-1])  # 76 px square, no crop
    images = []
    for r in dm.train_set.records:  # the training split only, through decode + ROI crop + the resize
        from alexnet_gtsrb.data.io import decode_rgb, roi_crop

        image = roi_crop(decode_rgb(r.path), r.roi, (r.width, r.height)) if r.roi else decode_rgb(r.path)
        images.append(base(image=image)["image"])
    assert images[0].shape == (76, 76, 3)
    _assert_matches_numpy(dm.pca, images)
    assert dm.pca.num_images == len(dm.train_set) < len(dm.train_set) + len(dm.val_set)
    # the training pipeline carries exactly these statistics
    noise = [t for t in dm.train_set.transform.transforms if isinstance(t, PaperPCANoise)]
    assert len(noise) == 1 and noise[0].eigenvalues == dm.pca.eigenvalues and noise[0].sigma == 0.1


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_stages_without_the_training_pipeline_compute_no_statistics(synthetic_root, stage):
    """robustness and evaluate set up for validation/test only: no pass over the training images."""
    dm = GTSRBDataModule(str(synthetic_root), image_size=67, num_workers=0, augment={"preset": "paper"})
    dm.setup(stage)
    assert dm.pca is None and dm.pca_file is None
    assert dm.test_set is not None and len(dm.test_set) > 0


def test_cache_is_reused_and_keyed_by_root_and_split(tmp_path):
    calls = []
    images = [np.full((3, 3, 3), v, np.uint8) + np.arange(3, dtype=np.uint8) * v for v in (10, 50, 90)]

    def source():
        calls.append(1)
        return iter(images)

    root = tmp_path / "data"
    root.mkdir()
    first, where = cached_rgb_pca(root, "train", {"size": 3}, ["a", "b"], source)
    assert where.parent == root / BESIDE_DATA and len(calls) == 1
    again, where2 = cached_rgb_pca(root, "train", {"size": 3}, ["a", "b"], source)
    assert again == first and where2 == where and len(calls) == 1  # read back, no image read
    cached_rgb_pca(root, "val", {"size": 3}, ["a", "b"], source)  # another split
    other = tmp_path / "other"
    other.mkdir()
    cached_rgb_pca(other, "train", {"size": 3}, ["a", "b"], source)  # another root
    cached_rgb_pca(root, "train", {"size": 4}, ["a", "b"], source)  # another pipeline
    assert len(calls) == 4


@pytest.mark.parametrize("how", ["mode", "unwritable"])
def test_read_only_data_folder_falls_back_to_the_cache_root(tmp_path, how):
    root = tmp_path / "readonly"
    root.mkdir()
    if how == "mode":  # marked read-only (as ../shared/gtsrb is): respected even by root
        root.chmod(0o555)
    else:  # a file where the folder would go: writing fails
        (root / BESIDE_DATA.parts[0]).write_text("not a folder")
    images = [np.arange(27, dtype=np.uint8).reshape(3, 3, 3) * 9]
    cache = tmp_path / "cache"
    try:
        stats, where = cached_rgb_pca(root, "train", {}, ["x"], lambda: iter(images), cache_dir=cache)
        assert where.parent == cache and where.is_file()
        assert not (root / BESIDE_DATA).exists()
        again, _ = cached_rgb_pca(root, "train", {}, ["x"], lambda: pytest.fail("recomputed"), cache_dir=cache)
        assert again == stats
    finally:
        root.chmod(0o755)


def test_paper_noise_applies_the_papers_shift():
    vals = (0.5, 0.2, 0.05)
    vecs = ((0.6, 0.6, 0.52915026), (0.7071067811865476, -0.7071067811865476, 0.0), (0.3741657, 0.3741657, -0.848528))
    t = PaperPCANoise(vals, vecs, sigma=0.1)
    image = np.full((4, 5, 3), 128, np.uint8)
    alphas = np.array([0.1, -0.2, 0.3])
    expected = 128 + 255 * (alphas * np.array(vals)) @ np.array(vecs)  # [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T
    out = t.apply(image, alphas=alphas)
    assert out.dtype == np.uint8 and np.all(out == np.rint(expected).astype(np.uint8))
    # drawn per image from N(0, sigma) by a seeded generator: the same seed, the same shift
    pipe = A.Compose([t])
    pipe.set_random_seed(7)
    shifts = [pipe(image=image)["image"].astype(float) - 128 for _ in range(400)]
    assert all(np.ptp(s.reshape(-1, 3), axis=0).max() == 0 for s in shifts)  # one shift per image
    recovered = np.array([s[0, 0] / 255 @ np.linalg.pinv(np.array(vecs)) / np.array(vals) for s in shifts])
    assert abs(recovered[:, 0].std() - 0.1) < 0.015 and abs(recovered[:, 0].mean()) < 0.015
    pipe.set_random_seed(7)
    assert np.array_equal(pipe(image=image)["image"].astype(float) - 128, shifts[0])
    clone = pickle.loads(pickle.dumps(t))  # DataLoader workers
    assert clone.eigenvalues == vals and np.array_equal(clone.apply(image, alphas=alphas), out)


def test_paper_preset_resizes_the_shorter_side_and_centre_crops():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a bright band in the middle of the wide image
    out = build_transform("paper", 227, train=False)(image=image)["image"]
    assert out.shape == (227, 227, 3)
    # 40x80 -> 256x512 (shorter side 256), centre 256, centre 227: the 20 px band becomes 128 px wide
    # (a plain resize to 256x256 would squash it to 64 px)
    assert out[:, 113].min() == 255 and out[:, 0].max() == 0
    assert 120 < int((out[0] > 128).all(axis=-1).sum()) < 136

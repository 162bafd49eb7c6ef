"""The paper's PCA colour augmentation: training-set statistics (data/pca.py), their cache, the per-image shift
on the float batch (batch_augment.PCANoise), and the DataModule computing and applying them for the paper preset."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch

from alexnet_gtsrb.data import datamodule as datamodule_module
from alexnet_gtsrb.data.batch_augment import PCANoise
from alexnet_gtsrb.data.datamodule import GTSRBDataModule
from alexnet_gtsrb.data.pca import BESIDE_DATA, RGBPCA, cached_rgb_pca, rgb_pca
from alexnet_gtsrb.data.transforms import build_transform


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
    # the colour noise of training batches carries exactly these statistics; the per-item pipeline has none
    assert dm.pca_noise is not None and dm.pca_noise.sigma == 0.1
    assert dm.pca_noise.eigenvalues == dm.pca.eigenvalues and dm.pca_noise.eigenvectors == dm.pca.eigenvectors
    assert [type(t).__name__ for t in dm.train_set.transform.transforms][-1] == "RandomCrop"


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_stages_without_the_training_pipeline_compute_no_statistics(synthetic_root, stage):
    """robustness and evaluate set up for validation/test only: no pass over the training images."""
    dm = GTSRBDataModule(str(synthetic_root), image_size=67, num_workers=0, augment={"preset": "paper"})
    dm.setup(stage)
    assert dm.pca is None and dm.pca_file is None and dm.pca_noise is None
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


VALS = (0.5, 0.2, 0.05)
VECS = ((0.6, 0.6, 0.52915026), (0.7071067811865476, -0.7071067811865476, 0.0), (0.3741657, 0.3741657, -0.848528))


def test_paper_noise_adds_the_papers_shift_in_float():
    """One shift per image, 255 * [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T (written out here with numpy), not rounded."""
    noise = PCANoise(VALS, VECS, sigma=0.1)
    images = torch.full((5, 3, 4, 6), 128.0)
    alphas = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.001], [-0.05, 0.02, 0.0], [0.2, 0.0, 0.0], [0.0, 0.1, 0.0]])
    expected = 128 + 255 * (alphas.double().numpy() * np.array(VALS)) @ np.array(VECS)  # (5, 3)
    noise.draw = lambda n, device: alphas[:n]
    out = noise(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.equal(images, torch.full_like(images, 128))  # the input is left as it was
    np.testing.assert_allclose(
        out.permute(0, 2, 3, 1).numpy(), np.broadcast_to(expected[:, None, None], (5, 4, 6, 3)), atol=1e-4
    )
    assert abs(float(out[1, 2, 0, 0]) - 128 - 255 * 0.001 * 0.05 * VECS[2][2]) < 1e-5  # 0.01 grey levels survive


def test_paper_noise_draws_are_per_image_from_the_seeded_torch_generator():
    noise = PCANoise(VALS, VECS, sigma=0.1)
    torch.manual_seed(7)
    alphas = noise.draw(4000, torch.device("cpu"))
    assert alphas.shape == (4000, 3)
    assert torch.allclose(alphas.std(0), torch.full((3,), 0.1), atol=0.005) and alphas.mean(0).abs().max() < 0.005
    torch.manual_seed(7)
    a = noise(torch.zeros(8, 3, 2, 2))
    torch.manual_seed(7)
    assert torch.equal(a, noise(torch.zeros(8, 3, 2, 2)))
    assert len({tuple(a[i, :, 0, 0].tolist()) for i in range(8)}) == 8  # each image its own shift
    clone = pickle.loads(pickle.dumps(noise))  # the DataModule is pickled under ddp_spawn
    assert clone.eigenvalues == VALS and clone.sigma == 0.1


def test_applied_shift_follows_the_intended_one_on_every_component(gtsrb_root, monkeypatch):
    """Real GTSRB training images through the paper preset's training path: the colour shift a training batch
    gets (the hook's float batch minus the same batch without noise) correlates with the intended shift,
    255 * a_i * l_i along p_i (the paper's formula, here), on each of the three components. The third GTSRB
    component moves pixels by ~0.04 grey levels: rounded to uint8, it would all but vanish."""

    def sampled_pca(root, split, settings, paths, images, cache_dir=None):  # a sample: the whole split takes ~1 min
        return rgb_pca(itertools.islice(images(), 256)), Path("unused.json")

    monkeypatch.setattr(datamodule_module, "cached_rgb_pca", sampled_pca)
    std = (1 / 255,) * 3  # experiment=paper's: the shift in grey levels is the difference itself
    dm = GTSRBDataModule(
        str(gtsrb_root),
        image_size=67,
        batch_size=64,
        num_workers=0,
        verify=False,
        augment={"preset": "paper"},
        mean=(0.485, 0.456, 0.406),
        std=std,
    )
    dm.setup("fit")
    assert dm.pca is not None and dm.pca_noise is not None
    images, labels = next(iter(dm.train_dataloader()))
    drawn = []
    draw = dm.pca_noise.draw
    monkeypatch.setattr(dm.pca_noise, "draw", lambda n, device: drawn.append(draw(n, device)) or drawn[-1])
    torch.manual_seed(0)
    dm.trainer = SimpleNamespace(training=True)
    noised, _ = dm.on_after_batch_transfer((images, labels), 0)
    dm.trainer = SimpleNamespace(training=False)
    clean, _ = dm.on_after_batch_transfer((images, labels), 0)
    dm.trainer = None
    per_pixel = (noised - clean) * (255.0 * torch.tensor(std).view(1, 3, 1, 1))  # grey levels
    applied = per_pixel.mean((2, 3)).double().numpy()  # (B, 3) RGB
    assert float((per_pixel - per_pixel.mean((2, 3), keepdim=True)).abs().max()) < 1e-3  # one shift per image
    alphas = drawn[0].double().numpy()
    vals, vecs = np.array(dm.pca.eigenvalues), np.array(dm.pca.eigenvectors)  # vecs[i] = p_i
    intended = 255.0 * alphas * vals  # (B, 3): the shift along each component
    along = applied @ vecs.T  # the applied shift projected on p_1, p_2, p_3 (orthonormal)
    corr = [float(np.corrcoef(along[:, i], intended[:, i])[0, 1]) for i in range(3)]
    print(f"shift sd per component (grey levels): {intended.std(0).round(3)}; correlation applied/intended {corr}")
    assert intended[:, 2].std() < 0.5  # the case that rounding destroys
    assert all(c >= 0.99 for c in corr), corr


def test_paper_preset_resizes_the_shorter_side_and_centre_crops():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a bright band in the middle of the wide image
    out = build_transform("paper", 227, train=False)(image=image)["image"]
    assert out.shape == (227, 227, 3)
    # 40x80 -> 256x512 (shorter side 256), centre 256, centre 227: the 20 px band becomes 128 px wide
    # (a plain resize to 256x256 would squash it to 64 px)
    assert out[:, 113].min() == 255 and out[:, 0].max() == 0
    assert 120 < int((out[0] > 128).all(axis=-1).sum()) < 136

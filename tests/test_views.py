"""The paper's 10 test views: cut at the scale each preset trains at, and flipped views used only through the
label mapping under which they are valid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from alexnet_gtsrb.data.io import decode_rgb
from alexnet_gtsrb.data.transforms import build_transform, view_source
from alexnet_gtsrb.evaluation.views import five_crops, ten_view_probabilities
from tests.helpers import CONF

SIZE = 67
BIG = 76  # round(67 * 256 / 227): the side the paper cuts its 5 crops from (Krizhevsky et al. 2012)
WHOLE_IMAGE_AUGMENTS = [
    {"preset": "gtsrb", "clahe": False},
    {"preset": "gtsrb", "clahe": True, "clahe_clip": 2.0, "clahe_tile": 4},
    {"preset": "none"},
]


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A non-square image with structure (a bright off-centre square on smooth noise)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2) * 180
    img[h // 5 : h // 2, w // 3 : 3 * w // 4] = 250
    return img.astype(np.uint8)


def _views(image: np.ndarray, augment: dict) -> list[np.ndarray]:
    big = view_source(SIZE, augment)(image=image)["image"]
    return [c[0].numpy() for c in five_crops(torch.from_numpy(big)[None], SIZE)]


def _shift_between(view: np.ndarray, plain: np.ndarray, max_shift: int) -> tuple[int, int] | None:
    """(dy, dx) with view[y, x] == plain[y - dy, x - dx] exactly wherever both are inside, or None."""
    n = plain.shape[0]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            v = view[max(dy, 0) : n + min(dy, 0), max(dx, 0) : n + min(dx, 0)]
            p = plain[max(-dy, 0) : n + min(-dy, 0), max(-dx, 0) : n + min(-dx, 0)]
            if np.array_equal(v, p):
                return dy, dx
    return None


@pytest.mark.parametrize("augment", WHOLE_IMAGE_AUGMENTS, ids=lambda a: f"{a['preset']}-clahe{a.get('clahe', False)}")
@pytest.mark.parametrize("shape", [(35, 41), (120, 97), (67, 67)])
def test_views_of_whole_image_presets_are_the_evaluation_image_and_its_training_size_shifts(augment, shape):
    """Presets trained on the whole image at 67 px: the centre view is exactly the one-view evaluation image,
    and every corner view is that image shifted (no rescaling: the sign keeps the size it had in training) by at
    most the gtsrb preset's training shift (conf/augment/gtsrb.yaml ``shift``, a fraction of the side)."""
    image = _photo(*shape, seed=sum(shape))
    plain = build_transform(augment["preset"], SIZE, train=False, params=augment)(image=image)["image"]
    views = _views(image, augment)
    assert np.array_equal(views[0], plain), "the centre view is not the evaluation image"
    train_shift = OmegaConf.load(CONF / "augment" / "gtsrb.yaml").shift * SIZE
    for k, view in enumerate(views[1:], start=1):
        shift = _shift_between(view, plain, max_shift=BIG - SIZE)
        assert shift is not None, f"corner view {k} is not a shifted copy of the evaluation image (rescaled?)"
        assert shift != (0, 0) and max(map(abs, shift)) <= train_shift, (k, shift)


def test_views_show_the_sign_at_the_size_the_evaluation_image_shows_it():
    """Object scale, measured: a bright square 31 px wide in the evaluation image is 31 px wide in every view
    (cutting 67 px crops from the image resized to 76 px would show it 35 px wide)."""
    image = np.full((50, 50, 3), 30, np.uint8)
    image[10:40, 10:40] = 230
    augment = {"preset": "gtsrb", "clahe": False}
    plain = build_transform("gtsrb", SIZE, train=False, params=augment)(image=image)["image"]

    def width(img: np.ndarray) -> int:
        return int((img[:, :, 0] > 130).any(axis=0).sum())

    assert all(width(v) == width(plain) for v in _views(image, augment)), (width(plain), _views(image, augment))


def test_paper_views_are_crops_of_the_image_the_paper_preset_trains_on(gtsrb_root):
    """The paper preset trains on random crops of its 256/227-enlarged image: its centre view is exactly its
    one-view evaluation image (the centre crop), on real GTSRB test images."""
    augment = {"preset": "paper", "clahe": True, "clahe_clip": 2.0, "clahe_tile": 4}
    for path in sorted(Path(gtsrb_root, "GTSRB", "Final_Test", "Images").glob("*.ppm"))[:5]:
        image = decode_rgb(str(path))
        plain = build_transform("paper", SIZE, train=False, params=augment)(image=image)["image"]
        big = view_source(SIZE, augment)(image=image)["image"]
        assert big.shape == (BIG, BIG, 3)
        assert np.array_equal(_views(image, augment)[0], plain)


def test_whole_image_views_on_real_gtsrb_images(gtsrb_root):
    augment = {"preset": "gtsrb", "clahe": True, "clahe_clip": 2.0, "clahe_tile": 4}
    for path in sorted(Path(gtsrb_root, "GTSRB", "Final_Test", "Images").glob("*.ppm"))[:5]:
        image = decode_rgb(str(path))
        plain = build_transform("gtsrb", SIZE, train=False, params=augment)(image=image)["image"]
        views = _views(image, augment)
        assert np.array_equal(views[0], plain)
        assert all(_shift_between(v, plain, BIG - SIZE) is not None for v in views[1:])


# -- flipped views ----------------------------------------------------------------------------------------------
# Written out from the class names (alexnet_gtsrb/data/classes.py CLASS_NAMES), not from the module's tables:
CURVE_LEFT, CURVE_RIGHT = 19, 20  # "Dangerous curve to the left" / "... to the right"
MIRROR = {19: 20, 20: 19, 33: 34, 34: 33, 36: 37, 37: 36, 38: 39, 39: 38}  # curves, turn/straight-or/keep pairs
SYMMETRIC = {11, 12, 13, 15, 17, 18, 22, 26, 30, 35}  # right-of-way, priority, yield, no vehicles, no entry, ...
SPEED_30, YIELD = 1, 13


class _Scripted(torch.nn.Module):
    """A classifier whose logits the test chooses: ``plain`` for an un-flipped view, ``flipped`` for a mirrored
    one. The test image is dark on the left and bright on the right, so a view is mirrored when its left half is
    brighter than its right half."""

    def __init__(self, plain: torch.Tensor, flipped: torch.Tensor) -> None:
        super().__init__()
        self.hparams = SimpleNamespace(num_classes=43)
        self.plain, self.flipped = plain, flipped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[2] // 2
        left, right = x[:, :, :half].float().mean(dim=(1, 2, 3)), x[:, :, -half:].float().mean(dim=(1, 2, 3))
        return torch.where((left > right)[:, None], self.flipped, self.plain)


def test_flipped_view_of_a_mirror_pair_sign_counts_for_its_twin_and_not_for_one_sided_classes():
    """One "curve left" image (class 19). Un-flipped views: p = softmax(plain); flipped: p' = softmax(flipped).
    By hand: q[c] = p'[twin(c)] for mirror pairs, p'[c] for symmetric signs, p[c] for every other class; q is
    renormalised and each view is (p + q) / 2 (all 5 crops alike here)."""
    plain = torch.zeros(43)
    plain[[CURVE_LEFT, CURVE_RIGHT, SPEED_30, YIELD]] = torch.tensor([2.0, 0.5, 1.0, 0.3])
    flipped = torch.zeros(43)  # a mirrored "curve left" looks like "curve right"; 30 km/h mirrored is garbage
    flipped[[CURVE_LEFT, CURVE_RIGHT, SPEED_30, YIELD]] = torch.tensor([-1.0, 3.0, 4.0, 1.0])
    image = np.zeros((BIG, BIG, 3), np.uint8)
    image[:, BIG // 2 :] = 200
    probs = ten_view_probabilities(_Scripted(plain, flipped), torch.from_numpy(image)[None], SIZE)[0].double()

    p, pf = plain.double().softmax(0).numpy(), flipped.double().softmax(0).numpy()
    q = p.copy()
    for c in range(43):
        if c in MIRROR:
            q[c] = pf[MIRROR[c]]
        elif c in SYMMETRIC:
            q[c] = pf[c]
    z = q.sum()
    expected = (p + q / z) / 2
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-6, atol=1e-9)
    # the same, class by class: curve left takes the flipped view's curve-right probability ...
    assert float(probs[CURVE_LEFT]) == pytest.approx((p[CURVE_LEFT] + pf[CURVE_RIGHT] / z) / 2, rel=1e-6)
    # ... yield (symmetric) takes its own, 30 km/h (one-sided, no twin) ignores the flipped view
    assert float(probs[YIELD]) == pytest.approx((p[YIELD] + pf[YIELD] / z) / 2, rel=1e-6)
    assert float(probs[SPEED_30]) == pytest.approx((p[SPEED_30] + p[SPEED_30] / z) / 2, rel=1e-6)
    # averaging the flipped view unmapped would have made 30 km/h the answer
    assert int(np.argmax((p + pf) / 2)) == SPEED_30 and int(probs.argmax()) == CURVE_LEFT

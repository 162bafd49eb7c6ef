"""The optional uint8 image cache (data.cache=true): same items as without it, built once, crash-safe."""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import torch

from alexnet_gtsrb.data import cache as cache_mod
from alexnet_gtsrb.data.cache import default_cache_dir
from alexnet_gtsrb.data.datamodule import GTSRBDataModule
from alexnet_gtsrb.data.gtsrb import index_gtsrb
from alexnet_gtsrb.data.transforms import get_preset
from alexnet_gtsrb.errors import BadDataError

SIZE = 32  # small, so the synthetic cache builds in well under a second


def make_dm(root: Path, cache_dir: Path | None, preset: str = "none", **kw) -> GTSRBDataModule:
    """A DataModule on a synthetic tree; cache_dir=None means no cache."""
    kw.setdefault("image_size", SIZE)
    return GTSRBDataModule(
        data_dir=str(root),
        augment={"preset": preset},
        num_workers=0,
        cache=cache_dir is not None,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        **kw,
    )


def ready(dm: GTSRBDataModule) -> GTSRBDataModule:
    """setup() and return the DataModule."""
    dm.setup("fit")
    return dm


@pytest.fixture()
def builds(monkeypatch) -> list[str]:
    """Counts cache builds: one entry (the file stem) per build_cache call."""
    calls: list[str] = []
    real = cache_mod.build_cache

    def counting(records, size, roi, stem, *args, **kwargs):
        calls.append(stem.name)
        return real(records, size, roi, stem, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "build_cache", counting)
    return calls


def npy_files(folder: Path) -> list[Path]:
    """The finished cache files in a folder."""
    return sorted(folder.glob("*.npy"))


def test_cache_image_size_follows_the_preset():
    assert get_preset("none").cache_side(227) == get_preset("gtsrb").cache_side(227) == 227
    assert get_preset("paper").cache_side(227) == 256  # the paper's 256 side for 227 px crops


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALEXNET_GTSRB_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "images"
    monkeypatch.delenv("ALEXNET_GTSRB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "alexnet_gtsrb" / "images"


@pytest.mark.parametrize("roi_crop", [True, False])
def test_cached_items_equal_uncached_preset_none(synthetic_root, tmp_path, roi_crop):
    plain = ready(make_dm(synthetic_root, None, roi_crop=roi_crop))
    cached = ready(make_dm(synthetic_root, tmp_path, roi_crop=roi_crop))
    for part in ("train_set", "val_set", "test_set"):
        a, b = getattr(plain, part), getattr(cached, part)
        assert a.records == b.records and b.cache is not None and a.cache is None
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            assert ya == yb and xb.dtype == torch.uint8 and xb.shape == (SIZE, SIZE, 3)
            assert torch.equal(xa, xb), f"{part}[{i}] differs"


@pytest.mark.parametrize("preset", ["gtsrb", "paper"])
def test_cached_eval_items_equal_uncached(synthetic_root, tmp_path, preset):
    """Eval pipelines start with the resize the cache already did, so they match pixel for pixel too."""
    plain = ready(make_dm(synthetic_root, None, preset))
    cached = ready(make_dm(synthetic_root, tmp_path, preset))
    assert cached.caches["train"].shape[1] == get_preset(preset).cache_side(SIZE)
    for part in ("val_set", "test_set"):
        a, b = getattr(plain, part), getattr(cached, part)
        for i in range(0, len(a), 7):
            assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    x, _ = cached.train_set[0]  # augmented: random, but the same shape and dtype
    assert x.shape == (SIZE, SIZE, 3) and x.dtype == torch.uint8


@pytest.mark.parametrize("preset", ["none", "gtsrb", "paper"])
def test_cache_with_clahe_stores_equalised_pixels_and_items_match_uncached(synthetic_root, tmp_path, preset):
    """augment.clahe: the cache applies CLAHE at the image's own size before its resize, as the uncached
    pipeline does, so evaluation items match pixel for pixel; the datasets on it skip their own CLAHE step.
    Preset none (resize only) has no CLAHE step, cached or not."""
    augment = {"preset": preset, "clahe": True, "clahe_clip": 2.0, "clahe_tile": 4}
    kw = {"image_size": SIZE, "num_workers": 0, "augment": augment, "data_dir": str(synthetic_root)}
    plain = ready(GTSRBDataModule(cache=False, **kw))
    cached = ready(GTSRBDataModule(cache=True, cache_dir=str(tmp_path), **kw))
    equalised = preset != "none"
    assert ("-clahe-" in cached.caches["train"].path.name) == equalised
    for part in ("val_set", "test_set"):
        a, b = getattr(plain, part), getattr(cached, part)
        for i in range(0, len(a), 5):
            assert torch.equal(a[i][0], b[i][0]), f"{part}[{i}] differs"
    # without CLAHE the same records make another cache (another key), whose pixels differ
    no_clahe = ready(make_dm(synthetic_root, tmp_path, preset))
    assert (no_clahe.caches["train"].path != cached.caches["train"].path) == equalised
    same = (no_clahe.caches["train"].reader().image(0) == cached.caches["train"].reader().image(0)).all()
    assert same != equalised


def test_cache_is_built_once_and_reused(synthetic_root, tmp_path, builds):
    dm = ready(make_dm(synthetic_root, tmp_path))
    assert len(builds) == 2  # training images and test images
    assert dm.caches["train"].built and dm.caches["train"].shape == (len(dm.index.train), SIZE, SIZE, 3)
    files = npy_files(tmp_path)
    assert len(files) == 2 and all(f.with_suffix(".json").is_file() for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = ready(make_dm(synthetic_root, tmp_path, val_fraction=0.3, split_seed=5))  # split is not in the key
    assert len(builds) == 2 and not again.caches["train"].built
    assert npy_files(tmp_path) == files and [f.stat().st_mtime_ns for f in files] == mtimes
    assert torch.equal(dm.test_set[3][0], again.test_set[3][0])


def test_image_size_roi_and_file_changes_make_new_keys(synthetic_copy, tmp_path, builds):
    ready(make_dm(synthetic_copy, tmp_path))
    ready(make_dm(synthetic_copy, tmp_path, image_size=SIZE + 8))
    ready(make_dm(synthetic_copy, tmp_path, roi_crop=False))
    ready(make_dm(synthetic_copy, tmp_path, preset="paper"))  # caches at round(SIZE * 256 / 227)
    assert len(builds) == len(set(builds)) == 8 and len(npy_files(tmp_path)) == 8
    image = sorted((synthetic_copy / "GTSRB" / "Final_Training" / "Images" / "00005").glob("*.ppm"))[0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited image: new training key
    ready(make_dm(synthetic_copy, tmp_path))
    assert len(builds) == 9 and len(set(builds)) == 9


def test_interrupted_build_is_rebuilt(synthetic_root, tmp_path, builds, monkeypatch):
    # 1) killed mid-build by an exception: no file that could look complete remains
    real = cache_mod.load_cropped
    count = {"n": 0}

    def dying(record, roi):
        count["n"] += 1
        if count["n"] == 20:
            raise KeyboardInterrupt
        return real(record, roi)

    monkeypatch.setattr(cache_mod, "load_cropped", dying)
    with pytest.raises(KeyboardInterrupt):
        ready(make_dm(synthetic_root, tmp_path))
    assert not npy_files(tmp_path) and not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(cache_mod, "load_cropped", real)

    # 2) killed hard (SIGKILL): a leftover temp file and no sidecar -> rebuilt, leftovers removed
    dm = ready(make_dm(synthetic_root, tmp_path))
    assert len(builds) == 3  # the failed training build, then training and test
    train_npy = dm.caches["train"].path
    train_npy.with_suffix(".json").unlink()
    leftover = train_npy.with_name(f".{train_npy.name}.k1ll3d.tmp")  # what a SIGKILLed build leaves
    leftover.write_bytes(b"half a cache")
    again = ready(make_dm(synthetic_root, tmp_path))
    assert len(builds) == 4 and again.caches["train"].built and not again.caches["test"].built
    assert not leftover.exists() and train_npy.with_suffix(".json").is_file()

    # 3) a truncated array with its sidecar still there is not trusted either
    with open(train_npy, "r+b") as f:
        f.truncate(train_npy.stat().st_size // 2)
    ready(make_dm(synthetic_root, tmp_path))
    assert len(builds) == 5


def _undecodable_png(path: Path) -> None:
    """A file whose PNG header is valid but whose pixel data is garbage."""
    ihdr = struct.pack(">IIBBBBB", 40, 40, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data + b"garbage" * 10)


def test_corrupt_image_during_build_names_the_file(synthetic_copy, tmp_path):
    """Unverified (or changed after verifying), a bad image stops the build naming it."""
    bad = sorted((synthetic_copy / "GTSRB" / "Final_Training" / "Images" / "00007").glob("*.ppm"))[1]
    _undecodable_png(bad)
    with pytest.raises(BadDataError, match=rf"{bad.name}: image cannot be decoded.*image cache"):
        ready(make_dm(synthetic_copy, tmp_path, verify=False))
    assert not npy_files(tmp_path) and not list(tmp_path.glob("*.tmp-*"))


def test_skip_builds_the_cache_from_the_verified_records(synthetic_copy, tmp_path, builds):
    bad = sorted((synthetic_copy / "GTSRB" / "Final_Training" / "Images" / "00007").glob("*.ppm"))[1]
    _undecodable_png(bad)
    listed = len(index_gtsrb(synthetic_copy).train)
    dm = ready(make_dm(synthetic_copy, tmp_path, on_bad_image="skip"))
    used = [r.path for r in dm.train_set.records + dm.val_set.records]
    assert str(bad) not in used and len(used) == listed - 1 == len(dm.index.train) == dm.caches["train"].shape[0]
    assert sorted(dm.caches["train"].row(p) for p in used) == list(range(len(used)))  # one row per kept image
    again = ready(make_dm(synthetic_copy, tmp_path, on_bad_image="skip"))  # reused: same records
    assert len(builds) == 2 and again.index.train == dm.index.train and not again.caches["train"].built
    with pytest.raises(BadDataError, match=bad.name):  # the file is still bad; with error it stops the run
        ready(make_dm(synthetic_copy, tmp_path, on_bad_image="error"))


def test_dataset_pickles_small_and_maps_lazily_in_workers(synthetic_root, tmp_path):
    dm = ready(make_dm(synthetic_root, tmp_path, batch_size=16))
    ds = dm.train_set
    blob = pickle.dumps(ds)
    assert len(blob) < dm.caches["train"].path.stat().st_size / 4
    clone = pickle.loads(blob)
    assert clone.cache._array is None  # opened on first use only
    assert torch.equal(clone[0][0], ds[0][0]) and clone.cache._array is not None
    assert pickle.loads(pickle.dumps(clone)).cache._array is None
    dm.hparams.num_workers = 1
    dm.hparams.persistent_workers = False
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (16, SIZE, SIZE, 3) and labels.shape == (16,)
    assert torch.equal(images[0], dm.val_set[0][0])


def test_config_defaults(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.data.cache is False
    assert cfg.data.cache_dir is None  # the default: <cache root>/images
    assert default_cache_dir().name == "images"


def test_cache_build_applies_the_pixel_limit(synthetic_root, tmp_path, monkeypatch):
    """The cache build decodes with the same limit: an image over it is named, as in the uncached path."""
    from alexnet_gtsrb.data import io as image_io

    monkeypatch.setattr(image_io, "MAX_PIXELS", 100)
    dm = make_dm(synthetic_root, tmp_path, verify=False)  # not verified: the build must refuse
    with pytest.raises(BadDataError, match=r"\.ppm.*image cache"):
        dm.setup("fit")

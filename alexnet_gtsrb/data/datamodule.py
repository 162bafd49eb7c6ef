"""GTSRBDataModule: find (or generate, or download) the data, split it by tracks, stream it from disk."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from alexnet_gtsrb.data.batch_augment import BatchAugment, PCANoise
from alexnet_gtsrb.data.cache import ImageCache, open_or_build
from alexnet_gtsrb.data.dataset import GTSRBDataset
from alexnet_gtsrb.data.gtsrb import GTSRBIndex, Record, detect_layout, index_gtsrb, verify_records
from alexnet_gtsrb.data.pca import RGBPCA, cached_rgb_pca
from alexnet_gtsrb.data.sampling import RunSampler, trainer_position, worker_init
from alexnet_gtsrb.data.split import split_records
from alexnet_gtsrb.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Pipeline,
    build_transform,
    check_mean_std,
    clahe_settings,
    get_preset,
    normalize_float255,
    normalize_uint8,
    view_source,
)
from alexnet_gtsrb.errors import BadDataError, ConfigError, DataNotFoundError
from alexnet_gtsrb.evaluation.views import check_test_views

log = logging.getLogger(__name__)
ON_BAD_IMAGE = ("error", "skip")  # what verifying the index does with an unreadable image


def _set_up(dataset: GTSRBDataset | None) -> GTSRBDataset:
    """``dataset``, which exists once ``setup()`` has run."""
    if dataset is None:
        raise RuntimeError("GTSRBDataModule.setup() must run before its datasets are used")
    return dataset


def _check_settings(hp: Mapping[str, Any]) -> None:
    """The DataModule's numbers and choices, each a one-line ConfigError naming its key (at start-up, and for a
    checkpoint's saved settings)."""
    if hp["on_bad_image"] not in ON_BAD_IMAGE:
        raise ConfigError(f"data.on_bad_image={hp['on_bad_image']!r}; allowed: {', '.join(ON_BAD_IMAGE)}.")
    for key, kind, low in (
        ("batch_size", int, 1),
        ("num_workers", int, 0),
        ("image_size", int, 1),
        ("num_classes", int, 1),
        ("split_seed", int, 0),
        ("val_fraction", float, 0.0),
        ("class_balance", float, 0.0),
    ):
        value = hp[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or (kind is int and not float(value).is_integer()) or value < low:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(
                f"data.{key}={value!r} must be {what} >= {low:g} (set it on the command line: data.{key}=...)."
            )
    if not 0.0 <= float(hp["class_balance"]) <= 1.0:
        raise ConfigError(
            f"data.class_balance={hp['class_balance']} must lie in [0, 1]: 0 draws classes as often as they occur, "
            "1 draws every class equally often, 0.5 in proportion to the square root of its count."
        )
    if hp["mean"] is not None and hp["std"] is not None:
        check_mean_std(hp["mean"], hp["std"])  # a zero std made every probability NaN


class GTSRBDataModule(LightningDataModule):
    """GTSRB train/val (track-aware split of the training images) and test (the official test images).

    Items are decoded in DataLoader workers (or read from the image cache, :mod:`alexnet_gtsrb.data.cache`) and
    stay uint8 until ``on_after_batch_transfer`` normalises the batch on the device it trains on.
    """

    @property
    def hparams(self) -> Any:
        """Lightning's saved hyper-parameters (an attribute dict), typed loosely so attribute access type-checks."""
        return super().hparams

    def __init__(
        self,
        data_dir: str | None = None,
        layout: str = "auto",
        num_classes: int = 43,
        image_size: int = 227,
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.2,
        split: str = "track",
        split_seed: int = 0,
        roi_crop: bool = True,
        augment: Mapping[str, Any] | None = None,
        flip_remap: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
        verify: bool = True,
        on_bad_image: str = "error",
        download: bool = False,
        synthetic: Mapping[str, Any] | None = None,
        cache: bool = False,
        cache_dir: str | None = None,
        class_balance: float = 0.0,
    ) -> None:
        super().__init__()
        if synthetic and not data_dir:
            from alexnet_gtsrb.data.synthetic import default_synthetic_root

            data_dir = str(default_synthetic_root(**dict(synthetic)))  # one tree per setting
        self.save_hyperparameters(logger=False)
        _check_settings(self.hparams)
        self.augment = dict(augment or {"preset": "none"})
        self.preset = get_preset(self.augment)
        on_device = self.augment.get("on_device", False)
        if on_device and not self.preset.batch_augment:
            raise ConfigError(
                f"data.augment.on_device=true runs a preset's augmentation on whole batches; preset "
                f"{self.preset.name!r} augments per item. Set data.augment.on_device=false (or augment=gtsrb)."
            )
        self.batch_augment = BatchAugment(self.augment) if on_device else None
        self.sampler_seed = torch.initial_seed() % 2**63  # seed_everything(seed) ran first: the seed itself
        self.index: GTSRBIndex | None = None
        self.train_set: GTSRBDataset | None = None
        self.val_set: GTSRBDataset | None = None
        self.test_set: GTSRBDataset | None = None
        self.caches: dict[str, ImageCache] = {}
        self.pca: RGBPCA | None = None  # the paper preset's training-set colour statistics, set in setup()
        self.pca_file: Path | None = None
        self.pca_noise: PCANoise | None = None  # their colour noise, added to training batches on the device
        self.test_views = 1
        build_transform(self.preset.name, image_size, train=True, params=self.augment)  # fails now, not in a worker

    # -- data on disk -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the synthetic tree or download the archives if asked; then make sure data is there."""
        hp = self.hparams
        if hp.synthetic:
            from alexnet_gtsrb.data.synthetic import generate

            generate(hp.data_dir, **dict(hp.synthetic))
        elif hp.download:
            from alexnet_gtsrb.data.download import download_gtsrb

            try:
                detect_layout(hp.data_dir, hp.layout)
            except DataNotFoundError:
                download_gtsrb(hp.data_dir)
        detect_layout(hp.data_dir, hp.layout)

    def _checked_index(self, need_train: bool = True) -> GTSRBIndex:
        """The index, checked against data.num_classes, each image's header read (under data.on_bad_image=skip:
        each image decoded, and the bad ones left out)."""
        hp = self.hparams
        index = index_gtsrb(hp.data_dir, hp.layout, need_train=need_train)
        labels = {r.label for r in index.train}
        if labels and (len(labels) != hp.num_classes or max(labels) >= hp.num_classes):
            raise ConfigError(
                f"data.num_classes={hp.num_classes} does not match the data in {index.root}: its training "
                f"images carry {len(labels)} distinct labels (max {max(labels)}). Set data.num_classes={len(labels)} "
                "or point data.data_dir at a complete GTSRB tree."
            )
        if not hp.verify and hp.on_bad_image != "skip":  # skip leaves out what verifying finds
            return index
        t0 = time.perf_counter()
        bad = verify_records(index.train + index.test, decode=hp.on_bad_image == "skip")
        log.info("Verified %d images in %.1f s", len(index.train) + len(index.test), time.perf_counter() - t0)
        if not bad:
            return index
        if hp.on_bad_image != "skip":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise BadDataError(f"{bad[0][1]}{more} Or set data.on_bad_image=skip to leave bad files out.")
        shown = ", ".join(r.path for r, _ in bad[:3]) + (", ..." if len(bad) > 3 else "")
        log.warning(
            f"data.on_bad_image=skip: leaving out {len(bad)} unreadable image(s): {shown} (first problem: {bad[0][1]})"
        )
        drop = {r.path for r, _ in bad}
        train, test = (tuple(r for r in part if r.path not in drop) for part in (index.train, index.test))
        return GTSRBIndex(index.root, index.layout, train, test)

    def setup(self, stage: str | None = None) -> None:
        """Index, verify, (with data.cache) open or build the image caches, and split once; build the datasets."""
        if self.index is not None:
            return
        hp, preset = self.hparams, self.preset
        index = self._checked_index(need_train=stage != "test")  # evaluating needs only the test set
        if hp.cache:  # built on every rank under a file lock: the first builds, the others reuse
            size, fit, clahe = preset.cache_side(hp.image_size), preset.cache_fit, clahe_settings(self.augment)
            for part in ("train", "test"):
                self.caches[part] = open_or_build(getattr(index, part), size, hp.roi_crop, hp.cache_dir, fit, clahe)
        self.index = index
        train, val = split_records(self.index.train, hp.split, hp.val_fraction, hp.split_seed)
        common = {"roi": hp.roi_crop}
        train_cache, test_cache = self.caches.get("train"), self.caches.get("test")
        # the training-set colour statistics only where the training pipeline is used (not validate/test)
        tf_params = self._transform_params()
        if preset.dataset_pca(self.augment) and stage in (None, "fit"):
            pixels = GTSRBDataset(train, view_source(hp.image_size, tf_params), cache=train_cache, **common)
            self._training_set_pca(index.root, train, pixels)
        eval_tf = build_transform(preset.name, hp.image_size, train=False, params=tf_params)
        # on_device: the random part runs on whole batches after the transfer; items get the deterministic part
        train_tf = eval_tf if self.batch_augment else build_transform(preset.name, hp.image_size, True, tf_params)
        if hp.cache and preset.cache_is_eval:  # cached rows are the evaluation pipeline's output: nothing left to do
            eval_tf = None
            train_tf = None if self.batch_augment else train_tf
        self.train_set = GTSRBDataset(train, train_tf, flip=hp.flip_remap, cache=train_cache, **common)
        self.val_set = GTSRBDataset(val, eval_tf, cache=train_cache, **common)
        self.test_set = GTSRBDataset(self.index.test, self._test_transform(eval_tf), cache=test_cache, **common)
        tracks = f"{len({r.track for r in train})} vs {len({r.track for r in val})} tracks"
        log.info(
            f"GTSRB ({self.index.layout} layout) at {self.index.root}: {len(train)} train / {len(val)} val "
            f"({hp.split} split, {tracks}) / {len(self.index.test)} test images"
        )

    def _training_set_pca(self, root: Path, train: Sequence[Record], pixels: GTSRBDataset) -> None:
        """The paper's PCA statistics of the training split's pixels (cached per root + split), logged."""
        hp = self.hparams

        def images() -> Iterator[np.ndarray]:
            log.info("PCA colour statistics: reading the %d training-split images once...", len(pixels))
            return (pixels.load(i)[0] for i in range(len(pixels)))

        settings = {
            "pipeline": f"{self.preset.name} view source",
            "image_size": hp.image_size,
            "roi_crop": hp.roi_crop,
            "cache": hp.cache,
            "clahe": [self.augment.get(k) for k in ("clahe", "clahe_clip", "clahe_tile")],
            "split": [hp.split, hp.val_fraction, hp.split_seed],
        }
        pca_dir = Path(hp.cache_dir) / "pca" if hp.cache_dir else None
        paths = [r.path for r in train]
        self.pca, self.pca_file = stats, _ = cached_rgb_pca(root, "train", settings, paths, images, cache_dir=pca_dir)
        sigma = float(self.augment.get("pca_alpha", 0.1))
        self.pca_noise = PCANoise(stats.eigenvalues, stats.eigenvectors, sigma)
        vectors = [[round(v, 6) for v in row] for row in stats.eigenvectors]
        log.info(
            f"PCA colour statistics of the training split ({stats.num_images} images, pixels in [0, 1]; "
            f"{self.pca_file}): eigenvalues {[f'{v:.6g}' for v in stats.eigenvalues]}, eigenvectors (rows) {vectors}"
        )
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero:
            logged = {"data/pca_eigenvalues": list(stats.eigenvalues), "data/pca_file": str(self.pca_file)}
            for lg in trainer.loggers:
                lg.log_hyperparams(logged)
            out_dir = Path(str(trainer.default_root_dir))
            if out_dir.is_dir():
                (out_dir / "pca.json").write_text(json.dumps(dataclasses.asdict(stats), indent=2) + "\n")

    def use_test_views(self, views: int) -> None:
        """``1``: the evaluation pipeline; ``10``: the image the test step cuts 5 crops and flips from."""
        self.test_views = check_test_views(views)
        if self.test_set is not None:
            eval_tf = build_transform(self.preset.name, self.hparams.image_size, False, self._transform_params())
            self.test_set.transform = self._test_transform(eval_tf)

    def _test_transform(self, eval_tf: Pipeline | None) -> Pipeline | None:
        return eval_tf if self.test_views == 1 else view_source(self.hparams.image_size, self._transform_params())

    def _transform_params(self) -> dict[str, Any]:
        """``data.augment`` for the per-item pipelines: without CLAHE when the image cache already applied it."""
        cached_clahe = self.hparams.cache and clahe_settings(self.augment) is not None
        return {**self.augment, "clahe": False} if cached_clahe else dict(self.augment)

    def class_counts(self) -> Counter:
        """Training-split images per class (for reports and class weighting)."""
        return Counter(r.label for r in _set_up(self.train_set).records)

    def train_sampler(self) -> RunSampler:
        """The training order (:mod:`.sampling`): a permutation per epoch, or with ``class_balance`` = a > 0
        ``len(train)`` draws with replacement, each image weighted count(class) ** -a (a class then appears in
        proportion to count ** (1 - a); a = 1: all equally often)."""
        records = _set_up(self.train_set).records
        alpha, weights = float(self.hparams.class_balance), None
        if alpha != 0.0:
            counts = self.class_counts()
            weights = [counts[r.label] ** -alpha for r in records]
        batch_size, trainer = int(self.hparams.batch_size), self.trainer
        world = trainer.world_size if trainer is not None else 1
        per_rank = -(-len(records) // world)  # Lightning's DistributedSampler pads to equal shares
        loader_batches = per_rank // batch_size if len(records) > batch_size else 1  # drop_last as in _loader
        position = functools.partial(trainer_position, trainer, loader_batches, batch_size, world > 1)
        return RunSampler(len(records), self.sampler_seed, position, weights)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_seed": self.sampler_seed}  # a resumed run without `seed=` keeps its order

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if isinstance(state_dict.get("sampler_seed"), int):
            self.sampler_seed = int(state_dict["sampler_seed"])

    # -- loaders --------------------------------------------------------------------------------------
    def _loader(self, dataset: GTSRBDataset, train: bool) -> DataLoader:
        hp = self.hparams
        pin = torch.cuda.is_available() if hp.pin_memory == "auto" else bool(hp.pin_memory)
        workers = int(hp.num_workers)
        rank = self.trainer.global_rank if self.trainer else 0
        return DataLoader(
            dataset,
            batch_size=int(hp.batch_size),
            sampler=self.train_sampler() if train else None,
            generator=torch.Generator().manual_seed(self.sampler_seed),  # worker seeds leave torch's global RNG
            drop_last=train and len(dataset) > int(hp.batch_size),  # no 1-image BatchNorm batches
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=bool(hp.persistent_workers) and workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=functools.partial(worker_init, rank=rank) if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(_set_up(self.train_set), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(_set_up(self.val_set), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(_set_up(self.test_set), train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 (B, H, W, 3) on the device -> normalised float (B, 3, H, W); labels pass. A training batch first
        gets ``data.augment.on_device``'s augmentation or ``augment.pca=dataset``'s colour noise, in float."""
        images, labels = batch
        hp = self.hparams
        training = self.trainer is not None and self.trainer.training
        if training and self.batch_augment is not None:
            floats = self.batch_augment.floats(images)
        elif training and self.preset.dataset_pca(self.augment):
            if self.pca_noise is None:
                raise RuntimeError("augment.pca=dataset: training needs setup('fit'), which computes the statistics.")
            floats = self.pca_noise(images.permute(0, 3, 1, 2).float())
        else:
            return normalize_uint8(images, hp.mean, hp.std, hp.channels_last), labels
        return normalize_float255(floats, hp.mean, hp.std, hp.channels_last), labels

"""Using a trained checkpoint: load it (plain data, ``weights_only=True``), read its evaluation settings, pick
a device. Shared by ``evaluate``, ``predict``, ``export``, ``report`` and the notebooks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException

from alexnet_gtsrb.checkpoints import check_finite, check_fits, read_checkpoint
from alexnet_gtsrb.errors import ConfigError
from alexnet_gtsrb.module import GTSRBClassifier
from alexnet_gtsrb.run_folder import checkpoint_for

log = logging.getLogger(__name__)


def load_classifier(ckpt_path: str | None, device: str = "cpu") -> tuple[GTSRBClassifier, dict[str, Any]]:
    """(model in eval mode on ``device``, the DataModule hyper-parameters saved in the checkpoint or {}).

    Lightning stores the DataModule's hparams next to the model's; they carry the preset, ROI crop and
    CLAHE settings the model was validated with. The file is read once, as plain data, its configs checked
    against the allowlist before the model is built, its weights checked for NaN/inf and for fitting the model
    (:func:`alexnet_gtsrb.checkpoints.read_checkpoint`); each problem is one line naming the file.

    ``ckpt_path`` is a file, a run folder (the checkpoint its results use: the run's ``test_ckpt`` rule,
    :func:`alexnet_gtsrb.run_folder.checkpoint_for`) or a folder of checkpoints (its newest ``last*.ckpt``).
    """
    path, _ = checkpoint_for(ckpt_path)
    if path is None:
        raise ConfigError("ckpt_path is required: ckpt_path=path/to/last.ckpt (or a run folder).")
    raw = read_checkpoint(path)
    model = build_classifier(raw, path)
    data_hp = dict(raw.get("datamodule_hyper_parameters") or {})
    model = model.to(device).eval()
    return model, data_hp


def build_classifier(raw: Mapping[str, Any], path: str) -> GTSRBClassifier:
    """The model a checkpoint's contents describe (already read by ``read_checkpoint``), its weights loaded:
    NaN/inf weights, hyper-parameters that build no model and weights that do not fit are one line each."""
    check_finite(raw["state_dict"], path)
    try:
        model = GTSRBClassifier(**raw["hyper_parameters"])
    except (TypeError, ValueError, OverflowError, InstantiationException) as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[-1][:200]
        raise ConfigError(f"{path}: its hyper_parameters do not build a model ({reason}).") from None
    state = raw["state_dict"]
    check_fits(state, model, path)
    model.load_state_dict(state)
    return model


def eval_settings(model: GTSRBClassifier, data_hp: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation pipeline of a checkpoint: image_size, augment (preset + CLAHE), roi_crop, mean, std.

    ``image_size`` comes from the network's hparams (the size the classifier head was built for); the rest
    from the saved DataModule hparams, falling back to the model's mean/std and the defaults.
    """
    hp = model.hparams
    image_size = int(hp.net.get("image_size") or data_hp.get("image_size") or 227)
    return {
        "image_size": image_size,
        "augment": dict(data_hp.get("augment") or {"preset": "none"}),
        "roi_crop": bool(data_hp.get("roi_crop", True)),
        "mean": [float(v) for v in hp.mean],
        "std": [float(v) for v in hp.std],
        "num_classes": int(hp.num_classes),
    }


def pick_device(name: str = "auto") -> str:
    """``auto`` -> cuda when available, else cpu; anything else is passed through."""
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


SPLIT_DEFAULTS = {"val_fraction": 0.2, "split": "track", "split_seed": 0}  # GTSRBDataModule's defaults


def data_config(data: Any, settings: Mapping[str, Any], data_hp: Mapping[str, Any]) -> Any:
    """A copy of a ``data`` DictConfig with every key left null filled from the checkpoint: the evaluation
    pipeline (``settings``: image size, ROI crop, mean/std, classes, augment) and the training run's
    validation split (``data_hp``: fraction, kind, seed), so a held-out set is the one the run held out."""
    from omegaconf import OmegaConf, open_dict

    out = data.copy()
    with open_dict(out):
        for key in ("image_size", "roi_crop", "mean", "std", "num_classes"):
            if out.get(key) is None:
                out[key] = settings[key]
        for key, default in SPLIT_DEFAULTS.items():
            if key in out and out.get(key) is None:
                out[key] = data_hp.get(key, default)
        if OmegaConf.is_missing(out, "augment") or out.get("augment") is None:
            out.augment = dict(settings["augment"])
    return out

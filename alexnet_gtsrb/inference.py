"""Using a trained checkpoint: load it (plain data, ``weights_only=True``), read its evaluation settings, pick
a device. Shared by ``evaluate``, ``predict``, ``export``, ``report`` and the notebooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from alexnet_gtsrb.checkpoints import resolve_ckpt_path
from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.module import GTSRBClassifier


def load_classifier(ckpt_path: str | None, device: str = "cpu") -> tuple[GTSRBClassifier, dict[str, Any]]:
    """(model in eval mode on ``device``, the DataModule hyper-parameters saved in the checkpoint or {}).

    Lightning stores the DataModule's hparams next to the model's; they carry the preset, ROI crop and
    CLAHE settings the model was validated with. Checkpoints hold plain containers: ``weights_only=True``.
    """
    path = resolve_ckpt_path(ckpt_path)
    if path is None:
        raise ConfigError("ckpt_path is required: ckpt_path=path/to/last.ckpt (or a run folder).")
    try:  # one read: the model's and the DataModule's hparams and the weights all come from it
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        model = GTSRBClassifier(**raw["hyper_parameters"])
        model.load_state_dict(raw["state_dict"])
    except (RuntimeError, KeyError, EOFError, OSError) as exc:
        raise UserError(f"ckpt_path={path}: cannot load this checkpoint ({type(exc).__name__}: {exc}).") from exc
    data_hp = dict(raw.get("datamodule_hyper_parameters") or {})
    model = model.to(device).eval()
    return model, data_hp


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

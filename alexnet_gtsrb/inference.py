"""Using a trained checkpoint: load it (plain data, ``weights_only=True``), read its evaluation settings, pick
a device. Shared by ``evaluate``, ``predict``, ``export``, ``report`` and the notebooks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException

from alexnet_gtsrb.checkpoints import CheckpointError, check_finite, check_fits, read_checkpoint
from alexnet_gtsrb.data.transforms import check_mean_std
from alexnet_gtsrb.errors import ConfigError, int_setting
from alexnet_gtsrb.models.alexnet import MAX_IMAGE_SIZE
from alexnet_gtsrb.module import GTSRBClassifier
from alexnet_gtsrb.run_folder import checkpoint_for

log = logging.getLogger(__name__)


def load_classifier(ckpt_path: str | None, device: str = "cpu") -> tuple[GTSRBClassifier, dict[str, Any]]:
    """(model in eval mode on ``device``, the DataModule hyper-parameters saved in the checkpoint or {}).

    Lightning stores the DataModule's hparams next to the model's; they carry the preset, ROI crop and
    CLAHE settings the model was validated with. The file is read once, as plain data, its configs checked
    against the allowlist and its tensors' storages against their shapes before the model is built, its weights
    checked for fitting the model and then for NaN/inf (:func:`alexnet_gtsrb.checkpoints.read_checkpoint`), its
    settings through the checks a command line gets (:func:`check_saved_settings`); each problem is one line
    naming the file.

    ``ckpt_path`` is a file, a run folder (the checkpoint its results use: the run's ``test_ckpt`` rule,
    :func:`alexnet_gtsrb.run_folder.checkpoint_for`) or a folder of checkpoints (its newest ``last*.ckpt``).
    """
    path, _ = checkpoint_for(ckpt_path)
    if path is None:
        raise ConfigError("ckpt_path is required: ckpt_path=path/to/last.ckpt (or a run folder).")
    raw = read_checkpoint(path)
    model = build_classifier(raw, path)
    data_hp = dict(raw.get("datamodule_hyper_parameters") or {})
    check_saved_settings(model, data_hp, path)
    model = model.to(device).eval()
    return model, data_hp


def check_saved_settings(model: GTSRBClassifier, data_hp: Mapping[str, Any], path: str) -> None:
    """One line naming ``path`` unless the checkpoint's evaluation settings pass the checks a command line gets:
    :func:`eval_settings`' own, then the DataModule's start-up checks (numbers, preset, CLAHE, the training and
    evaluation pipelines), run by building one from them as train does; nothing is read from disk."""
    from alexnet_gtsrb.data.datamodule import GTSRBDataModule

    try:
        settings = eval_settings(model, data_hp)
        split = {key: data_hp.get(key, default) for key, default in _split_defaults().items()}
        keys = ("image_size", "num_classes", "roi_crop", "mean", "std", "augment")
        GTSRBDataModule(**split, **{key: settings[key] for key in keys})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its saved settings are refused: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:  # albumentations' and float()'s own checks
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its saved data settings build no pipeline ({reason}).") from None


def build_classifier(raw: Mapping[str, Any], path: str) -> GTSRBClassifier:
    """The model a checkpoint's contents describe (already read by ``read_checkpoint``), its weights loaded:
    hyper-parameters that build no model, weights that do not fit and NaN/inf weights are one line each. The
    model is first built on the meta device and the weights' shapes checked against it, so neither a network
    declared far larger than its weights nor a weight of another shape allocates anything."""
    state = raw["state_dict"]
    try:
        with torch.device("meta"):  # shapes only: a huge declared network allocates nothing
            shell = GTSRBClassifier(**raw["hyper_parameters"])
        check_fits(state, shell, path)  # shapes only; then check_finite reads tensors of the model's shapes
        check_finite(state, path)
        model = GTSRBClassifier(**raw["hyper_parameters"])
    except (TypeError, ValueError, OverflowError, InstantiationException) as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[-1][:200]
        raise ConfigError(f"{path}: its hyper_parameters do not build a model ({reason}).") from None
    model.load_state_dict(state)
    return model


def eval_settings(model: GTSRBClassifier, data_hp: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation pipeline of a checkpoint: image_size, augment (preset + CLAHE), roi_crop, mean, std.

    ``image_size`` is the one the network's classifier head was built for (else the saved DataModule's); the
    rest comes from the saved DataModule hparams, falling back to the model's mean/std and the defaults. A value
    that cannot work (a string for a number, a zero std, more classes than the network has outputs) is a
    ConfigError naming it.
    """
    hp = model.hparams
    size = getattr(model.net, "image_size", None) or data_hp.get("image_size") or 227
    image_size = int_setting("image_size", size, 1, MAX_IMAGE_SIZE)
    num_classes = int_setting("num_classes", hp.num_classes, 1)
    outputs = getattr(model.net, "num_classes", num_classes)
    if num_classes != outputs:
        raise ConfigError(f"num_classes={num_classes}, but the network has {outputs} outputs.")
    augment = data_hp.get("augment") or {"preset": "none"}
    if not isinstance(augment, Mapping):
        raise ConfigError(f"augment={augment!r} must be a mapping (preset, clahe, ...), not {type(augment).__name__}.")
    roi_crop = data_hp.get("roi_crop", True)
    if not isinstance(roi_crop, bool):
        raise ConfigError(f"roi_crop={roi_crop!r} must be true or false.")
    mean, std = check_mean_std(hp.mean, hp.std)
    return {
        "image_size": image_size,
        "augment": dict(augment),
        "roi_crop": roi_crop,
        "mean": mean,
        "std": std,
        "num_classes": num_classes,
    }


def pick_device(name: str | None = "auto") -> str:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` when this machine has
    that device. Anything else (a GPU index past the last, ``meta``, a typo) is a ConfigError naming ``device``
    and the values allowed here: passed on, it ended in a traceback when the model was moved there.
    """
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    allowed = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus else [])
    if torch.backends.mps.is_available():
        allowed.append("mps")
    if str(name) in allowed:
        return str(name)
    raise ConfigError(
        f"device={name!r} is not a device of this machine ({gpus} CUDA GPU(s)); allowed: {', '.join(allowed)}."
    )


def _split_defaults() -> dict[str, Any]:
    """GTSRBDataModule's own defaults of the split settings (read from its signature, not copied)."""
    import inspect

    from alexnet_gtsrb.data.datamodule import GTSRBDataModule

    params = inspect.signature(GTSRBDataModule.__init__).parameters
    return {key: params[key].default for key in ("val_fraction", "split", "split_seed")}


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
        for key, default in _split_defaults().items():
            if key in out and out.get(key) is None:
                out[key] = data_hp.get(key, default)
        if OmegaConf.is_missing(out, "augment") or out.get("augment") is None:
            out.augment = dict(settings["augment"])
    return out

"""Using a trained checkpoint: load it (plain data, ``weights_only=True``), read its evaluation settings, pick
a device, and open it for evaluation (:func:`eval_context`). Shared by every entry point and the notebooks."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException

from alexnet_gtsrb.checkpoints import CheckpointError, check_finite, check_fits, read_checkpoint
from alexnet_gtsrb.data.transforms import check_mean_std
from alexnet_gtsrb.errors import ConfigError, int_setting
from alexnet_gtsrb.loggers import LoggerGroup
from alexnet_gtsrb.models.alexnet import MAX_IMAGE_SIZE
from alexnet_gtsrb.module import GTSRBClassifier
from alexnet_gtsrb.run_folder import checkpoint_for
from alexnet_gtsrb.utils.cli import print_rank_zero
from alexnet_gtsrb.utils.files import atomic_write

log = logging.getLogger(__name__)


def load_classifier(ckpt_path: str | None, device: str = "cpu") -> tuple[GTSRBClassifier, dict[str, Any]]:
    """(model in eval mode on ``device``, the DataModule hparams saved beside it: the preset, ROI crop and CLAHE
    it was validated with, or {}). ``ckpt_path`` is a file, a run folder (its ``test_ckpt`` rule's checkpoint) or
    a folder of checkpoints (its newest ``last*.ckpt``); the file is read once, as plain data, and every problem
    (:func:`build_classifier`, :func:`check_saved_settings`) is one line naming it."""
    path, _ = checkpoint_for(ckpt_path)
    if path is None:
        raise ConfigError("ckpt_path is required: ckpt_path=path/to/last.ckpt (or a run folder).")
    raw = read_checkpoint(path)
    model = build_classifier(raw, path)
    data_hp = dict(raw.get("datamodule_hyper_parameters") or {})
    check_saved_settings(model, data_hp, path)
    return model.to(device).eval(), data_hp


def check_saved_settings(model: GTSRBClassifier, data_hp: Mapping[str, Any], path: str) -> None:
    """One line naming ``path`` unless the checkpoint's evaluation settings pass :func:`eval_settings` and the
    DataModule's start-up checks (built from them as train does; nothing is read from disk)."""
    from alexnet_gtsrb.data.datamodule import GTSRBDataModule

    try:
        settings = eval_settings(model, data_hp)
        keys = ("image_size", "num_classes", "roi_crop", "mean", "std", "augment")
        GTSRBDataModule(**_saved_split(data_hp), **{key: settings[key] for key in keys})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its saved settings are refused: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:  # albumentations' and float()'s own checks
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its saved data settings build no pipeline ({reason}).") from None


def build_classifier(raw: Mapping[str, Any], path: str) -> GTSRBClassifier:
    """The model a checkpoint's contents describe, its weights loaded: hyper-parameters that build no model,
    weights that do not fit and NaN/inf weights are one line each. The model is first built on the meta device
    and the weights' shapes checked against it, so neither a network declared far larger than its weights nor a
    weight of another shape allocates anything."""
    state = raw["state_dict"]
    try:
        with torch.device("meta"):
            shell = GTSRBClassifier(**raw["hyper_parameters"])
        check_fits(state, shell, path)
        check_finite(state, path)
        model = GTSRBClassifier(**raw["hyper_parameters"])
    except (TypeError, ValueError, OverflowError, InstantiationException) as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[-1][:200]
        raise ConfigError(f"{path}: its hyper_parameters do not build a model ({reason}).") from None
    model.load_state_dict(state)
    return model


def eval_settings(model: GTSRBClassifier, data_hp: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation pipeline of a checkpoint: image_size (the network's, else the saved DataModule's), augment
    (preset + CLAHE), roi_crop (the DataModule's), mean, std, num_classes (the model's); a value that cannot work
    (a string for a number, a zero std, more classes than outputs) is a ConfigError naming it."""
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
    it; anything else is a ConfigError naming the values allowed (passed on, it ended in a traceback)."""
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


def _saved_split(data_hp: Mapping[str, Any]) -> dict[str, Any]:
    """The validation split (fraction, kind, seed) a checkpoint's run held out: saved with it, else
    GTSRBDataModule's own defaults (read from its signature, not copied)."""
    from alexnet_gtsrb.data.datamodule import GTSRBDataModule

    params = inspect.signature(GTSRBDataModule.__init__).parameters
    return {key: data_hp.get(key, params[key].default) for key in ("val_fraction", "split", "split_seed")}


@dataclass
class EvalContext:
    """What ``evaluate`` and ``robustness`` work on: the checkpoint's model (eval mode, on ``device``), the file
    and why it was chosen, its evaluation settings, a DataModule set up with its data settings (a ``data.*`` key
    given on the command line wins), the image size, the output folder and the ``logger`` group."""

    model: GTSRBClassifier
    ckpt_path: str
    chosen_by: str
    settings: dict[str, Any]
    datamodule: Any
    size: int
    device: str
    out_dir: Path
    loggers: LoggerGroup

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Close the loggers, then write ``metrics.json`` after every other output, atomically: its presence
        marks a complete report."""
        self.loggers.close()
        with atomic_write(self.out_dir / "metrics.json", "w") as f:
            f.write(json.dumps(metrics, indent=2, allow_nan=True) + "\n")


def eval_context(cfg: Any, stage: str) -> EvalContext:
    """Open ``cfg.ckpt_path`` on ``cfg.device`` with a DataModule set up for ``stage`` (``test``/``validate``), the
    output folder ``paths.output_dir`` (an earlier ``metrics.json`` there removed) and the loggers of ``logger``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    device = pick_device(cfg.get("device", "auto"))
    path, chosen_by = checkpoint_for(cfg.get("ckpt_path"))
    model, data_hp = load_classifier(path, device)
    print_rank_zero(f"checkpoint: {path} ({chosen_by})")
    settings = eval_settings(model, data_hp)
    # every data key left null: the checkpoint's setting, and its run's validation split, so that a held-out set is
    # the one the run held out
    data_cfg = cfg.data.copy()
    saved = {key: settings[key] for key in ("image_size", "roi_crop", "mean", "std", "num_classes", "augment")}
    saved |= {key: value for key, value in _saved_split(data_hp).items() if key in data_cfg}
    with open_dict(data_cfg):
        for key, value in saved.items():
            if OmegaConf.is_missing(data_cfg, key) or data_cfg.get(key) is None:
                data_cfg[key] = value
    size = int(data_cfg.image_size)
    if size != settings["image_size"]:
        log.warning("data.image_size=%d differs from the checkpoint's %d.", size, settings["image_size"])
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)
    datamodule = instantiate(data_cfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup(stage)
    loggers = LoggerGroup(cfg.get("logger"))
    return EvalContext(model, str(path), chosen_by, settings, datamodule, size, device, out_dir, loggers)

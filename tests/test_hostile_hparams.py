"""Issue 28, item 4: checkpoint values that pass the ``_target_`` allowlist but are wrong (plain data of the
wrong kind, size or depth) end in one line naming the file, never a traceback, NaN output or a huge allocation.

The checkpoint is built here, without training: a real GTSRBClassifier and DataModule composed from
``experiment=demo`` at 67 px, and a real RunCheckpoint's state, laid out as Lightning writes them. The fuzz
tests (Hypothesis, derandomized) feed hostile values to the in-memory loading path
(:func:`alexnet_gtsrb.checkpoints.check_contents`, ``build_classifier``, ``check_saved_settings``) and to
``RunCheckpoint.load_state_dict``, the only consumer of the callback state.
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, SupportsIndex

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet_gtsrb.allowlist import MAX_DEPTH
from alexnet_gtsrb.callbacks.checkpoint import RunCheckpoint
from alexnet_gtsrb.checkpoints import check_contents
from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.inference import build_classifier, check_saved_settings, eval_settings, load_classifier
from tests.helpers import compose_config, run_in_process

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """A checkpoint's contents as Lightning lays them out (untrained weights: nothing here needs a trained model)."""
    from hydra.utils import instantiate

    overrides = ["experiment=demo", "data.image_size=67", "data.synthetic=null", "data.data_dir=null"]
    cfg = compose_config("train", overrides)
    model = instantiate(cfg.model, _recursive_=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    callback = RunCheckpoint(dirpath=str(folder), monitor="val/acc", mode="max")
    return {
        "epoch": 1,
        "global_step": 6,
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "datamodule_hyper_parameters": dict(datamodule.hparams),
        "callbacks": {callback.state_key: callback.state_dict()},
        "loops": {},
    }


class _Tensor:
    """Pickles as the tensor ``torch.load(weights_only=True)`` rebuilds from ``storage`` with any shape and strides:
    what a crafted file holds (``torch.save`` of a real tensor never pairs a small storage with a big shape)."""

    def __init__(self, storage: torch.TypedStorage, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args: tuple[Any, ...] = (storage, 0, shape, stride, False, collections.OrderedDict())

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return torch._utils._rebuild_tensor_v2, self.args


def _nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


def _hostile(good: dict, attack: str) -> dict:
    """``good`` with one attack applied (copies: the fixture is shared)."""
    raw = {**good, "state_dict": dict(good["state_dict"])}
    hp = raw["hyper_parameters"] = copy.deepcopy(good["hyper_parameters"])
    data = raw["datamodule_hyper_parameters"] = copy.deepcopy(good["datamodule_hyper_parameters"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it is what a tensor's pickle holds
        one = torch.zeros(1).storage()  # a one-element float32 storage
    edits = {
        "net._partial_": lambda: hp["net"].update(_partial_=True),
        "std=[0,0,0]": lambda: hp.update(std=[0, 0, 0]),
        "mean of length 5": lambda: hp.update(mean=[0.5] * 5),
        "mean a string": lambda: hp.update(mean="abc"),
        "num_classes past the head": lambda: hp.update(num_classes=10**9),
        "datamodule hparams a list": lambda: raw.update(datamodule_hyper_parameters=[1, 2]),
        "augment a string": lambda: data.update(augment="gtsrb"),
        "clahe_tile=100000": lambda: data["augment"].update(clahe=True, clahe_tile=100000),
        "clahe_clip=-5": lambda: data["augment"].update(clahe=True, clahe_clip=-5),
        "roi_crop a string": lambda: data.update(roi_crop="false"),
        "3000-deep list": lambda: hp.update(deep=_nested(3000)),
        "100000x100000 over 4 bytes": lambda: raw["state_dict"].update(
            {"net.features.0.weight": _Tensor(one, (100000, 100000), (0, 0))}
        ),
        "model-shaped weight over 4 bytes": lambda: raw["state_dict"].update(
            {"net.features.0.weight": _Tensor(one, (96, 3, 11, 11), (0, 0, 0, 0))}
        ),
        "negative BatchNorm variance": lambda: raw["state_dict"].update(
            {k: -v for k, v in raw["state_dict"].items() if k.endswith("running_var")}
        ),
    }
    edits[attack]()
    return raw


def _save(raw: dict, path: Path) -> Path:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pickling a 3000-deep list recurses; the loader does not
    try:
        torch.save(raw, path)
    finally:
        sys.setrecursionlimit(limit)
    return path


ATTACKS = {  # attack -> what its one line says
    "net._partial_": "net._partial_=True",
    "std=[0,0,0]": "std=[0, 0, 0] must be 3 numbers",
    "mean of length 5": "mean=[0.5, 0.5, 0.5, 0.5, 0.5] must be 3 numbers",
    "mean a string": "mean=['a', 'b', 'c'] must be 3 numbers",
    "num_classes past the head": "num_classes=1000000000, but the network has 43 outputs",
    "datamodule hparams a list": "datamodule_hyper_parameters is a list, not a mapping",
    "augment a string": "augment='gtsrb' must be a mapping",
    "clahe_tile=100000": "augment.clahe_tile=100000 must be a whole number from 1 to 64",
    "clahe_clip=-5": "augment.clahe_clip=-5 must be a number from 1 to 1000",
    "roi_crop a string": "roi_crop='false' must be true or false",
    "3000-deep list": f"nests deeper than {MAX_DEPTH} levels",
    "100000x100000 over 4 bytes": "40000000000 bytes, over a storage of 4 bytes",
    "model-shaped weight over 4 bytes": "over a storage of 4 bytes",
    "negative BatchNorm variance": "negative BatchNorm variance",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_value_is_one_line_naming_the_file(good, tmp_path, attack):
    path = _save(_hostile(good, attack), tmp_path / "hostile.ckpt")
    with pytest.raises(UserError) as info:
        load_classifier(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and ATTACKS[attack] in message, message


def test_the_untouched_checkpoint_loads_with_its_settings(good, tmp_path):
    model, data_hp = load_classifier(str(_save(good, tmp_path / "good.ckpt")))
    assert eval_settings(model, data_hp)["image_size"] == 67 and data_hp["augment"]["preset"] == "gtsrb"


@pytest.mark.parametrize("attack", ["std=[0,0,0]", "100000x100000 over 4 bytes"])
def test_predict_exits_2_with_one_line_and_no_probabilities(good, tmp_path, attack):
    """std=[0,0,0] printed NaN probabilities with exit 0; the crafted tensor asked for 40 GB."""
    image = tmp_path / "sign.png"
    cv2.imwrite(str(image), np.full((40, 40, 3), 128, np.uint8))
    path = _save(_hostile(good, attack), tmp_path / "hostile.ckpt")
    r = run_in_process(
        "predict", [f"ckpt_path={path}", f"images={image}", "device=cpu", f"paths.output_dir={tmp_path}"]
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-2000:]
    assert str(path) in errors[0] and ATTACKS[attack] in errors[0] and "nan" not in r.stdout.lower()


@pytest.mark.parametrize("shape", ["cycle", "shared 2**60 times"])
def test_self_referencing_and_exponentially_shared_values_are_refused(good, shape):
    raw = _hostile(good, "net._partial_")
    raw["hyper_parameters"]["net"].pop("_partial_")
    value: list = [1]
    if shape == "cycle":
        value.append(value)
    else:
        for _ in range(60):
            value = [value, value]
    raw["hyper_parameters"]["extra"] = value
    with pytest.raises(UserError, match="nests deeper|more than"):
        check_contents(raw, "crafted.ckpt")


# -- the callback state ------------------------------------------------------------------------------------------


def _callback(tmp_path: Path) -> RunCheckpoint:
    callback = RunCheckpoint(dirpath=str(tmp_path / "checkpoints"), monitor="val/acc", mode="max", save_top_k=1)
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    return callback


def _restored_kinds_are_sane(callback: RunCheckpoint) -> None:
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        assert isinstance(getattr(callback, key), str)
    for score in [callback.best_model_score, callback.kth_value, *callback.best_k_models.values()]:
        assert score is None or (isinstance(score, torch.Tensor) and score.numel() == 1)
    assert all(isinstance(p, str) for p in callback.best_k_models)


@pytest.mark.parametrize(
    "state",
    [
        [1, 2],
        "state",
        {"dirpath": torch.ones(3), "best_model_path": ""},
        {"best_model_path": 5, "best_model_score": torch.ones(100, 100), "kth_value": "x"},
        {"best_model_path": "", "best_k_models": {b"x": 1.0, 3: torch.tensor(0.5)}},
    ],
    ids=["a list", "a string", "dirpath a tensor", "scores of the wrong kind", "best_k keys of the wrong kind"],
)
def test_callback_state_of_the_wrong_kind_is_dropped_not_raised(tmp_path, caplog, state):
    callback = _callback(tmp_path)
    with caplog.at_level(logging.WARNING):
        callback.load_state_dict(state)
    _restored_kinds_are_sane(callback)
    assert "wrong kind" in caplog.text


# -- fuzzing -------------------------------------------------------------------------------------------------------

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 3, 64, 65, 100000, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["gtsrb", "paper", "none", "track", "1e9", "nan"]),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_HP = ["num_classes", "mean", "std", "label_smoothing", "channels_last", "compile", "backbone_lr_scale", "extra"]
_NET = ["num_classes", "image_size", "dropout", "groups", "lrn", "batch_norm", "init", "_partial_", "_args_"]
_DATA = ["augment", "image_size", "num_classes", "roi_crop", "val_fraction", "split", "split_seed", "mean", "std"]
_AUG = ["preset", "clahe", "clahe_clip", "clahe_tile", "on_device", "scale", "shift", "rotate", "pca", "pca_alpha"]


def _mutate(raw: dict, data: st.DataObject) -> None:
    """Replace one to three values anywhere in the model's or the DataModule's hyper-parameters."""
    places = {
        "hp": (raw["hyper_parameters"], _HP),
        "net": (raw["hyper_parameters"]["net"], _NET),
        "data": (raw["datamodule_hyper_parameters"], _DATA),
        "augment": (raw["datamodule_hyper_parameters"]["augment"], _AUG),
    }
    for _ in range(data.draw(st.integers(1, 3))):
        target, keys = places[data.draw(st.sampled_from(sorted(places)))]
        if isinstance(target, dict):
            target[data.draw(st.sampled_from(keys))] = data.draw(_VALUES)


@FUZZ
@given(data=st.data())
def test_fuzzed_hyper_parameters_load_or_raise_one_user_error(good, data):
    """Either the model loads with finite, sane settings, or a UserError (one line) is raised; nothing else."""
    raw = {**good, **copy.deepcopy({k: good[k] for k in ("hyper_parameters", "datamodule_hyper_parameters")})}
    _mutate(raw, data)
    try:
        checked = check_contents(raw, "fuzzed.ckpt")
        model = build_classifier(checked, "fuzzed.ckpt")
        data_hp = dict(checked.get("datamodule_hyper_parameters") or {})
        check_saved_settings(model, data_hp, "fuzzed.ckpt")
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzzed.ckpt: ")
        return
    found = eval_settings(model, data_hp)
    assert all(math.isfinite(v) and v > 0 for v in found["std"]) and 1 <= found["image_size"] <= 512


_SCORES = st.one_of(
    _LEAVES,
    st.just(torch.tensor(0.5)),
    st.just(torch.ones(3)),
    st.just(torch.tensor([[0.5]])),
    st.just(torch.tensor(float("nan"))),
    st.just(torch.tensor(1, dtype=torch.int64)),
    st.just(torch.empty(0)),
)
_STATE_KEYS = ["best_model_path", "kth_best_model_path", "last_model_path", "dirpath", "monitor"]
_STATE_KEYS += ["best_model_score", "kth_value", "current_score", "best_k_models"]


@FUZZ
@given(data=st.data())
def test_fuzzed_callback_state_restores_sane_values_or_drops_them(good, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz_callback")
    callback = _callback(folder)
    inside = str(folder / "checkpoints" / "epoch_001.ckpt")
    paths = st.sampled_from([inside, "/etc/passwd", str(folder / "checkpoints" / ".." / "x"), ""]) | _LEAVES
    state = copy.copy(next(iter(good["callbacks"].values())))
    state["dirpath"] = str(folder / "checkpoints")
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(_STATE_KEYS))
        if key == "best_k_models":
            state[key] = data.draw(st.dictionaries(paths, _SCORES, max_size=3) | _VALUES)
        else:
            state[key] = data.draw(paths if key.endswith(("_path", "dirpath")) else _SCORES)
    whole = data.draw(st.sampled_from([state, state, state, [state], None, "x"]))
    callback.load_state_dict(whole)
    _restored_kinds_are_sane(callback)

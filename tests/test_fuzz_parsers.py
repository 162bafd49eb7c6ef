"""Bounded, repeatable fuzzing (Hypothesis) of the parsers a user's files reach.

The annotation CSV reader (random bytes, random rows in the official and Kaggle layouts) and the image reader
with its pixel limit (random bytes behind each known magic, mutated real images): no input may end in anything
but a clean result or a ``UserError``, and a clean result must hold what the index promises (files inside their
folder, ROIs inside the declared size, no image twice, at least one test image) or what the reader promises
(a uint8 RGB image within the limit).
``derandomize=True`` and no example database: CI sees the same ~200 examples per test every run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet_gtsrb.data import io as image_io
from alexnet_gtsrb.data.gtsrb import _read_csv, index_gtsrb
from alexnet_gtsrb.data.io import decode_rgb
from alexnet_gtsrb.errors import BadDataError, UserError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OFFICIAL = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
KAGGLE = ["Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId", "Path"]
MAGICS = [b"", b"P6", b"P6\n", b"P5 ", b"P4\n", b"P3\n", b"P1 ", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM"]
MAGICS += [b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L", b"RIFF\0\0\0\0WEBPVP8X"]

# CSV fields: plausible values, hostile names and plain noise
_names = st.sampled_from(["a.ppm", "b.ppm", "a.ppm", "../a.ppm", "/etc/hostname", "x/a.ppm", "..", ".", "", " "])
_numbers = st.integers(-3, 300).map(str) | st.sampled_from(["1e3", "0x10", "1_0", "٣", "+5", "-0", "9" * 30])
_noise = st.text(max_size=12)
_field = _names | _numbers | _noise | st.sampled_from(['"a;b"', '"q\nr"', ";", ",", "\0"])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(scratch: Path) -> Path:
    root = scratch / "tree"
    shutil.rmtree(root, ignore_errors=True)
    return root


def _write_csv(path: Path, header: list[str], rows: list[list[str]], sep: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


def _check_index(index, folders: dict[str, Path] | None, root: Path) -> None:
    """What a clean index promises, whatever the CSVs held."""
    assert index.train and index.test
    for records in (index.train, index.test):
        assert len({os.path.normpath(r.path) for r in records}) == len(records)
    for r in (*index.train, *index.test):
        assert 0 <= r.label < 43
        if folders is not None:  # official: directly inside the CSV's folder
            assert Path(r.path).parent in folders.values() and Path(r.path).name not in ("", ".", "..")
        else:  # Kaggle: inside the root
            rel = os.path.relpath(os.path.normpath(r.path), root)
            assert not rel.startswith("..") and rel != "."
        if r.roi is not None:
            x1, y1, x2, y2 = r.roi
            assert 0 <= x1 <= x2 < r.width and 0 <= y1 <= y2 < r.height


@FUZZ
@given(
    data=st.binary(max_size=400)
    | st.builds(lambda t, b: t + b, st.sampled_from([b"Filename;ClassId\n"]), st.binary(max_size=300))
)
def test_csv_reader_on_random_bytes(scratch, data):
    path = scratch / "random.csv"
    path.write_bytes(data)
    try:
        rows = _read_csv(path, ";", ("Filename", "ClassId"))
    except BadDataError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    assert [n for n, _ in rows] == sorted({n for n, _ in rows}) and all(n >= 2 for n, _ in rows)
    assert all("Filename" in row and "ClassId" in row for _, row in rows)


_random_row = st.lists(_field, min_size=7, max_size=9)


def _good_row(label: int | None) -> st.SearchStrategy[list[str]]:
    """A valid official row (ClassId ``label``, or any class when None)."""
    parts = st.tuples(st.sampled_from(["a.ppm", "b.ppm", "c.ppm"]), st.integers(1, 60), st.integers(1, 60))
    labels = st.integers(0, 42) if label is None else st.just(label)
    return st.builds(
        lambda t, c: [t[0], str(t[1]), str(t[2]), "0", "0", str(t[1] - 1), str(t[2] - 1), str(c)], parts, labels
    )


def _mutated(row: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    """A valid row with one field replaced: an impossible ROI, a hostile name, noise."""
    return st.builds(lambda r, i, v: [*r[:i], v, *r[i + 1 :]], row, st.integers(0, 7), _field)


def _rows(label: int | None) -> st.SearchStrategy[list[list[str]]]:
    """Valid rows (so the index gets past them) or a mix of valid, mutated and random ones."""
    valid = st.lists(_good_row(label), min_size=1, max_size=3, unique_by=lambda r: r[0])
    return valid | st.lists(_good_row(label) | _mutated(_good_row(label)) | _random_row, min_size=1, max_size=4)


_header = (
    st.just(OFFICIAL)
    | st.permutations(OFFICIAL)
    | _mutated(st.just(OFFICIAL)).filter(lambda h: h != OFFICIAL)
    | st.lists(st.sampled_from([*OFFICIAL, "X", ""]), max_size=9)
)


@FUZZ
@given(header=_header, train_rows=_rows(3), test_rows=_rows(None))
def test_official_index_on_random_rows(scratch, header, train_rows, test_rows):
    root = _fresh(scratch)
    folders = {
        "train": root / "GTSRB" / "Final_Training" / "Images" / "00003",
        "test": root / "GTSRB" / "Final_Test" / "Images",
    }
    _write_csv(folders["train"] / "GT-00003.csv", header, train_rows, ";")
    _write_csv(folders["test"] / "GT-final_test.csv", OFFICIAL, test_rows, ";")
    try:
        index = index_gtsrb(root)
    except UserError as e:
        assert "\n" not in str(e)
        return
    _check_index(index, folders, root)


_kaggle_path = st.sampled_from(
    ["Train/0/00000_00000_00000.png", "Train/1/./01_00002_00000.png", "Train/../../x.png", "/etc/hostname", ".."]
) | st.text(alphabet="./\\ab0_", max_size=14)
_good_kaggle = st.builds(
    lambda folder, name, w, c: [str(w), str(w), "1", "1", str(w - 1), str(w - 1), str(c), f"{folder}/{name}.png"],
    st.sampled_from(["Train/0", "Train/1", "Test", "Train/0/../1"]),
    st.sampled_from(["00000_00000_00000", "01_00002_00003", "x"]),
    st.integers(2, 50),
    st.integers(0, 42),
)
_kaggle_rows = st.lists(_good_kaggle, min_size=1, max_size=3) | st.lists(
    _good_kaggle | st.builds(lambda r, p: [*r[:7], p], _good_kaggle, _kaggle_path) | _mutated(_good_kaggle),
    max_size=4,
)


@FUZZ
@given(train=_kaggle_rows, test=_kaggle_rows)
def test_kaggle_index_on_random_paths(scratch, train, test):
    root = _fresh(scratch)
    (root / "Train").mkdir(parents=True)
    for name, rows in (("Train.csv", train), ("Test.csv", test)):
        _write_csv(root / name, KAGGLE, [[v.replace(",", "") for v in row] for row in rows], ",")
    try:
        index = index_gtsrb(root)
    except UserError as e:
        assert "\n" not in str(e)
        return
    _check_index(index, None, root)


_pnm_header = st.builds(
    lambda magic, parts: magic + b"".join(parts),
    st.sampled_from([b"P1", b"P3", b"P4", b"P5", b"P6"]),
    st.lists(
        st.sampled_from([b" ", b"\n", b"\t", b"# c\n", b"#", b"0", b"7", b"65535", b"65536", b"99999999999", b"-1"]),
        max_size=12,
    ),
)


def _decoded_within_the_limit(path: Path, cap: int) -> None:
    """decode_rgb of ``path`` with the pixel limit at ``cap``: a uint8 RGB image within it, or one BadDataError
    line naming the file."""
    try:
        with mock.patch.object(image_io, "MAX_PIXELS", cap):
            image = decode_rgb(str(path))
    except BadDataError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= 1 and image.shape[0] * image.shape[1] <= cap


@FUZZ
@given(data=st.builds(lambda m, b: m + b, st.sampled_from(MAGICS), st.binary(max_size=300)) | _pnm_header)
def test_reader_and_pixel_limit_on_random_bytes(scratch, data):
    path = scratch / "random.img"
    path.write_bytes(data)
    _decoded_within_the_limit(path, 10_000)


def _encoded(ext: str) -> bytes:
    image = (np.arange(9 * 11 * 3) % 251).astype(np.uint8).reshape(9, 11, 3)
    return cv2.imencode(ext, image)[1].tobytes()


REAL = {ext: _encoded(ext) for ext in (".ppm", ".png", ".jpg", ".bmp", ".webp")}


@FUZZ
@given(
    ext=st.sampled_from(sorted(REAL)),
    edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 400),
)
def test_decode_of_mutated_real_images_stays_under_the_limit(scratch, ext, edits, cut):
    data = bytearray(REAL[ext])
    for pos, value in edits:  # mutate the first 64 bytes, where the headers are
        if pos < len(data):
            data[pos] = value
    path = scratch / f"mutated{ext}"
    path.write_bytes(bytes(data[:cut] if cut is not None else data))
    _decoded_within_the_limit(path, 4096)


# -- checkpoint hyper-parameters -------------------------------------------------------------------------------
_TARGETS = st.sampled_from(
    [
        "alexnet_gtsrb.models.alexnet.AlexNet",
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.StepLR",
        "torch.load",
        "os.system",
        "builtins.eval",
        "torch.optim.Optimizer.step",
        "",
    ]
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.just("${oc.env:HOME}"),
    st.builds(lambda t: {"_target_": t}, _TARGETS),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_HPARAM_KEYS = ["net", "optimizer", "scheduler", "num_classes", "label_smoothing", "channels_last", "mean", "std"]
_NET_KEYS = ["variant", "groups", "lrn", "batch_norm", "dropout", "conv_dropout", "init", "image_size", "num_classes"]


@pytest.fixture(scope="module")
def real_checkpoint(tiny_run) -> dict:
    import torch

    return torch.load(tiny_run.dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_checkpoint_hyper_parameters_build_a_model_or_raise_a_user_error(real_checkpoint, data):
    """A checkpoint's hyper-parameters with one or two values replaced by anything: the allowlist check and the
    model build either succeed or end in a UserError (one line for the user); nothing else escapes."""
    import copy

    from alexnet_gtsrb.allowlist import check_config
    from alexnet_gtsrb.errors import UserError
    from alexnet_gtsrb.inference import build_classifier

    hp = copy.deepcopy(real_checkpoint["hyper_parameters"])
    for _ in range(data.draw(st.integers(1, 2))):
        if data.draw(st.booleans()) and isinstance(hp["net"], dict):
            hp["net"][data.draw(st.sampled_from(_NET_KEYS))] = data.draw(_VALUES)
        else:
            hp[data.draw(st.sampled_from(_HPARAM_KEYS))] = data.draw(_VALUES)
    raw = {**real_checkpoint, "hyper_parameters": hp}
    try:
        check_config(hp, "fuzzed checkpoint")
        build_classifier(raw, "fuzzed checkpoint")
    except UserError:
        pass

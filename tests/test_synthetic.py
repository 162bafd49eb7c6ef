"""Tests of the synthetic GTSRB generator: official layout, decodable images, determinism, caching, atomicity."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from alexnet_gtsrb.data import synthetic
from alexnet_gtsrb.data.synthetic import CSV_HEADER, MARKER_NAME, default_synthetic_root, generate, tree

SMALL = {"train_tracks_per_class": 2, "frames_per_track": 2, "test_per_class": 2, "seed": 0}
N_CLASSES = 43


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small tree shared by the read-only tests."""
    return generate(tmp_path_factory.mktemp("syn") / "ds", **SMALL)


def _csv(path: Path) -> tuple[str, list[list[str]]]:
    """Header line and split rows of an annotation file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0], [line.split(";") for line in lines[1:] if line]


def _train_dir(root: Path) -> Path:
    return root / "GTSRB" / "Final_Training" / "Images"


def _test_dir(root: Path) -> Path:
    return root / "GTSRB" / "Final_Test" / "Images"


def _all_rows(root: Path) -> list[tuple[Path, list[str]]]:
    """(image path, csv row) for every train and test image."""
    out = []
    for c in range(N_CLASSES):
        d = _train_dir(root) / f"{c:05d}"
        out += [(d / r[0], r) for r in _csv(d / f"GT-{c:05d}.csv")[1]]
    d = _test_dir(root)
    out += [(d / r[0], r) for r in _csv(d / "GT-final_test.csv")[1]]
    return out


def _snapshot(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file in a tree."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_layout_headers_and_names(small_root: Path) -> None:
    """Official folder layout, exact CSV header, CSV rows == files, TTTTT_FFFFF / NNNNN naming."""
    assert sorted(p.name for p in (small_root / "GTSRB").iterdir()) == ["Final_Test", "Final_Training"]
    class_dirs = sorted(p.name for p in _train_dir(small_root).iterdir())
    assert class_dirs == [f"{c:05d}" for c in range(N_CLASSES)]
    for c in range(N_CLASSES):
        d = _train_dir(small_root) / f"{c:05d}"
        header, rows = _csv(d / f"GT-{c:05d}.csv")
        assert header == CSV_HEADER == "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
        assert all(len(r) == 8 for r in rows)
        assert sorted(p.name for p in d.iterdir()) == sorted([f"GT-{c:05d}.csv"] + [r[0] for r in rows])
        tracks_frames = sorted(
            tuple(int(v) for v in re.fullmatch(r"(\d{5})_(\d{5})\.ppm", r[0]).groups()) for r in rows
        )
        assert tracks_frames == [(t, f) for t in range(2) for f in range(2)]
        assert {int(r[7]) for r in rows} == {c}
    header, rows = _csv(_test_dir(small_root) / "GT-final_test.csv")
    assert header == CSV_HEADER
    assert [r[0] for r in rows] == [f"{i:05d}.ppm" for i in range(N_CLASSES * 2)]
    on_disk = sorted(p.name for p in _test_dir(small_root).iterdir())
    assert on_disk == sorted(["GT-final_test.csv"] + [r[0] for r in rows])
    marker = json.loads((small_root / MARKER_NAME).read_text())
    assert marker["params"] == SMALL and marker["counts"] == {"train": N_CLASSES * 4, "test": N_CLASSES * 2}


def test_images_decode_with_listed_size_and_roi(small_root: Path) -> None:
    """Every image is a P6 PPM that decodes to uint8 HxWx3 of the CSV size, with the ROI inside it."""
    rows = _all_rows(small_root)
    assert len(rows) == N_CLASSES * 6
    for path, r in rows:
        assert path.read_bytes()[:2] == b"P6"
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        w, h, x1, y1, x2, y2 = (int(v) for v in r[1:7])
        assert img.shape[:2] == (h, w)
        assert 30 <= w <= 90 and 30 <= h <= 90
        assert 0 <= x1 < x2 < w and 0 <= y1 < y2 < h
        assert x2 - x1 + 1 >= 12 and y2 - y1 + 1 >= 12  # the sign is a real part of the image


def test_all_classes_present_and_test_shuffled(small_root: Path) -> None:
    """43 classes in train and test, test_per_class of each in the test set, not in class order."""
    train = [int(r[7]) for p, r in _all_rows(small_root) if "Final_Training" in str(p)]
    test = [int(r[7]) for r in _csv(_test_dir(small_root) / "GT-final_test.csv")[1]]
    assert sorted(set(train)) == list(range(N_CLASSES))
    assert np.bincount(test, minlength=N_CLASSES).tolist() == [2] * N_CLASSES
    assert test != sorted(test)


def test_frames_of_a_track_grow(small_root: Path) -> None:
    """A track approaches the camera: the sign's ROI does not shrink from frame to frame."""
    for c in range(N_CLASSES):
        d = _train_dir(small_root) / f"{c:05d}"
        rows = dict((r[0], r) for r in _csv(d / f"GT-{c:05d}.csv")[1])
        for t in range(2):
            a, b = rows[f"{t:05d}_00000.ppm"], rows[f"{t:05d}_00001.ppm"]
            assert int(b[5]) - int(b[3]) >= int(a[5]) - int(a[3]) - 1


def test_deterministic_per_seed(small_root: Path, tmp_path: Path) -> None:
    """Same seed: byte-identical tree. Other seed: different images."""
    same = generate(tmp_path / "same", **SMALL)
    assert _snapshot(same) == _snapshot(small_root)
    other = generate(tmp_path / "other", **{**SMALL, "seed": 1})
    a, b = _snapshot(small_root), _snapshot(other)
    images = [k for k in a if k.endswith(".ppm")]
    assert sum(a[k] != b.get(k) for k in images) > 0.9 * len(images)


def test_cached_then_regenerated_when_params_change(tmp_path: Path) -> None:
    """A second identical call rewrites nothing; other parameters (or overwrite) regenerate."""
    root = tmp_path / "ds"
    params = {**SMALL, "train_tracks_per_class": 1, "frames_per_track": 1, "test_per_class": 1}
    assert generate(root, **params) == root.absolute()
    before = _mtimes(root)
    time.sleep(0.02)
    t0 = time.perf_counter()
    generate(root, **params)
    assert time.perf_counter() - t0 < 0.5
    assert _mtimes(root) == before
    generate(root, **{**params, "frames_per_track": 2})
    assert json.loads((root / MARKER_NAME).read_text())["params"]["frames_per_track"] == 2
    assert len(list((_train_dir(root) / "00007").glob("*.ppm"))) == 2
    generate(root, **{**params, "frames_per_track": 2}, overwrite=True)
    assert (root / MARKER_NAME).stat().st_mtime_ns != before[MARKER_NAME]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old trees left


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch) -> None:
    """A crash mid-way leaves no root and no temp tree; the next call generates normally."""
    root = tmp_path / "ds"
    real_write = tree._write_image
    calls = {"n": 0}

    def failing_write(path: Path, rgb: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 30:
            raise RuntimeError("simulated interruption")
        real_write(path, rgb)

    monkeypatch.setattr(tree, "_write_image", failing_write)
    with pytest.raises(RuntimeError, match="simulated"):
        generate(root, **SMALL)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tree, "_write_image", real_write)
    generate(root, **SMALL)
    assert tree._is_complete(root, SMALL)


def test_partial_temp_tree_is_not_complete(tmp_path: Path) -> None:
    """A killed run's temp sibling (partial tree, even with a marker) is never used; old ones are cleaned."""
    root = tmp_path / "ds"
    stale = tmp_path / ".ds.tmp-killed"
    (stale / "GTSRB" / "Final_Training" / "Images" / "00000").mkdir(parents=True)
    (stale / MARKER_NAME).write_text(json.dumps({"format_version": synthetic.FORMAT_VERSION, "params": SMALL}))
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert not tree._is_complete(root, SMALL)
    generate(root, **SMALL)
    assert tree._is_complete(root, SMALL)
    assert not stale.exists()
    # A root with data but without the marker is not complete, and is not ours to replace.
    foreign = tmp_path / "foreign"
    (foreign / "GTSRB" / "Final_Training" / "Images").mkdir(parents=True)
    assert not tree._is_complete(foreign, SMALL)
    with pytest.raises(FileExistsError):
        generate(foreign, **SMALL)
    assert (foreign / "GTSRB").is_dir()


def test_losing_a_race_keeps_the_winner(small_root: Path, tmp_path: Path) -> None:
    """If another process installed the same tree first, the late one leaves it untouched."""
    tmp = tmp_path / ".late.tmp"
    tmp.mkdir()
    (tmp / "GTSRB").mkdir()
    before = _mtimes(small_root)
    assert tree._install(tmp, small_root, SMALL) is False
    assert _mtimes(small_root) == before and tmp.exists()


def test_learnable_nearest_class_mean(small_root: Path) -> None:
    """Classes differ: a nearest-class-mean on normalised 12x12 ROI crops beats chance (1/43) by far."""

    def features(split_rows: list[tuple[Path, list[str]]]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for path, r in split_rows:
            x1, y1, x2, y2 = (int(v) for v in r[3:7])
            crop = cv2.imread(str(path), cv2.IMREAD_COLOR)[y1 : y2 + 1, x1 : x2 + 1]
            f = cv2.resize(crop, (12, 12), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            xs.append((f - f.mean()) / (f.std() + 1e-6))
            ys.append(int(r[7]))
        return np.stack(xs), np.array(ys)

    rows = _all_rows(small_root)
    x, y = features([pr for pr in rows if "Final_Training" in str(pr[0])])
    tx, ty = features([pr for pr in rows if "Final_Test" in str(pr[0])])
    means = np.stack([x[y == c].mean(0) for c in range(N_CLASSES)])
    pred = ((tx[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    accuracy = float((pred == ty).mean())
    assert accuracy > 0.2, accuracy  # chance is 0.023; about 0.5 is typical


def test_default_root_env(monkeypatch, tmp_path: Path) -> None:
    """The cache root follows ALEXNET_GTSRB_CACHE, else ~/.cache/alexnet_gtsrb."""
    monkeypatch.setenv("ALEXNET_GTSRB_CACHE", str(tmp_path))
    assert default_synthetic_root().parent == tmp_path / "synthetic"
    monkeypatch.delenv("ALEXNET_GTSRB_CACHE")
    assert default_synthetic_root().parent == Path.home() / ".cache" / "alexnet_gtsrb" / "synthetic"
    # one folder per setting: another setting never replaces a tree a running job reads
    assert default_synthetic_root(20, 2, 5, 0) != default_synthetic_root(20, 2, 5, 1) != default_synthetic_root()


def test_bad_params_rejected(tmp_path: Path) -> None:
    """Zero tracks/frames/test images or a negative seed fail early with a clear error."""
    for bad in ({"frames_per_track": 0}, {"train_tracks_per_class": 0}, {"test_per_class": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            generate(tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli(tmp_path: Path, capsys) -> None:
    """main() and `python -m alexnet_gtsrb.data.synthetic` generate and report the image counts."""
    root = tmp_path / "cli"
    args = ["--root", str(root), "--tracks", "1", "--frames", "1", "--test", "1", "--seed", "3"]
    assert synthetic.main(args) == 0
    assert f"{N_CLASSES} train + {N_CLASSES} test images" in capsys.readouterr().out
    assert tree._is_complete(root, {"train_tracks_per_class": 1, "frames_per_track": 1, "test_per_class": 1, "seed": 3})
    res = subprocess.run(
        [sys.executable, "-m", "alexnet_gtsrb.data.synthetic", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert str(root) in res.stdout

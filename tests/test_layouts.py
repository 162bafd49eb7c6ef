"""The same images in the official, torchvision and Kaggle layouts index to the same (label, pixels)."""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import cv2
import pytest

from alexnet_gtsrb.data.gtsrb import detect_layout, index_gtsrb
from alexnet_gtsrb.data.io import decode_rgb


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))


HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def _official_subset(src: Path, dst: Path, per_class: int) -> Path:
    """Copy the first ``per_class`` training rows of each class (and all test images) into dst."""
    for gt in sorted((src / "GTSRB" / "Final_Training" / "Images").glob("*/GT-*.csv")):
        out = dst / "GTSRB" / "Final_Training" / "Images" / gt.parent.name
        out.mkdir(parents=True)
        rows = _rows(gt)[:per_class]
        with open(out / gt.name, "w", newline="") as f:
            w = csv.DictWriter(f, HEADER, delimiter=";")
            w.writeheader()
            w.writerows(rows)
        for r in rows:
            shutil.copy(gt.parent / r["Filename"], out / r["Filename"])
    shutil.copytree(src / "GTSRB" / "Final_Test", dst / "GTSRB" / "Final_Test")
    return dst


def _to_torchvision(official: Path, dst: Path) -> Path:
    """torchvision's layout: gtsrb/GTSRB/Training/000NN/ and gtsrb/GTSRB/Final_Test/Images + gtsrb/GT-final_test.csv."""
    base = dst / "gtsrb"
    shutil.copytree(official / "GTSRB" / "Final_Training" / "Images", base / "GTSRB" / "Training")
    test = base / "GTSRB" / "Final_Test" / "Images"
    shutil.copytree(official / "GTSRB" / "Final_Test" / "Images", test)
    shutil.move(test / "GT-final_test.csv", base / "GT-final_test.csv")
    return dst


def _to_kaggle(official: Path, dst: Path) -> Path:
    """Kaggle's layout: Train/<id>/CC_TTTTT_FFFFF.png, Test/NNNNN.png, comma-separated Train.csv/Test.csv."""
    header = ["Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId", "Path"]
    train_rows, test_rows = [], []
    for gt in sorted((official / "GTSRB" / "Final_Training" / "Images").glob("*/GT-*.csv")):
        for r in _rows(gt):
            label = int(r["ClassId"])
            rel = f"Train/{label}/{label:02d}_{Path(r['Filename']).stem}.png"
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dst / rel), cv2.imread(str(gt.parent / r["Filename"])))
            train_rows.append({**{k: r[k] for k in header[:-1]}, "Path": rel})
    test_dir = official / "GTSRB" / "Final_Test" / "Images"
    for r in _rows(test_dir / "GT-final_test.csv"):
        rel = f"Test/{Path(r['Filename']).stem}.png"
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst / rel), cv2.imread(str(test_dir / r["Filename"])))
        test_rows.append({**{k: r[k] for k in header[:-1]}, "Path": rel})
    for name, rows in (("Train.csv", train_rows), ("Test.csv", test_rows)):
        with open(dst / name, "w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            w.writerows(rows)
    return dst


def _content(records) -> Counter:
    return Counter((r.label, hashlib.sha1(decode_rgb(r.path).tobytes()).hexdigest()) for r in records)


def _check_same(official: Path, tmp_path: Path) -> None:
    ref = index_gtsrb(official)
    tv = index_gtsrb(_to_torchvision(official, tmp_path / "tv"))
    kg = index_gtsrb(_to_kaggle(official, tmp_path / "kaggle"))
    assert (ref.layout, tv.layout, kg.layout) == ("official", "torchvision", "kaggle")
    for other in (tv, kg):
        assert _content(other.train) == _content(ref.train)
        assert _content(other.test) == _content(ref.test)
        assert sorted(r.track for r in other.train) == sorted(r.track for r in ref.train)
        assert sorted(r.roi for r in other.train) == sorted(r.roi for r in ref.train)


def test_layouts_agree_on_synthetic_tree(synthetic_root, tmp_path):
    _check_same(synthetic_root, tmp_path)


def test_layouts_agree_on_real_images(gtsrb_root, tmp_path):
    _check_same(_official_subset(gtsrb_root, tmp_path / "official", per_class=20), tmp_path)


def test_forced_layout_that_is_absent(synthetic_root):
    from alexnet_gtsrb.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="kaggle layout"):
        detect_layout(synthetic_root, "kaggle")

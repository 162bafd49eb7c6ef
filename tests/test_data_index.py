"""Indexing a GTSRB tree: real-data counts, track-aware split, ROI, and clear errors for bad data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from alexnet_gtsrb.data.dataset import GTSRBDataset
from alexnet_gtsrb.data.gtsrb import detect_layout, index_gtsrb, verify_records
from alexnet_gtsrb.data.io import roi_crop
from alexnet_gtsrb.data.split import random_split, split_records, track_split
from alexnet_gtsrb.errors import BadDataError, ConfigError, DataNotFoundError


def test_real_gtsrb_counts_and_leak_free_split(gtsrb_root):
    index = index_gtsrb(gtsrb_root)
    assert index.layout == "official"
    train, val = track_split(index.train, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == 25087
    assert {r.path for r in train}.isdisjoint({r.path for r in val})
    assert not ({r.track for r in train} & {r.track for r in val})
    assert {r.label for r in train} == {r.label for r in val} == set(range(43))
    assert 0.17 < len(val) / 25087 < 0.23
    # the official test images, with labels exactly as in GT-final_test.csv
    gt_csv = gtsrb_root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"
    with open(gt_csv) as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert len(index.test) == len(rows) == 430
    assert [(Path(r.path).name, r.label) for r in index.test] == [(r["Filename"], int(r["ClassId"])) for r in rows]
    assert all(r.track is None for r in index.test)


def test_real_gtsrb_random_split_leaks_tracks(gtsrb_root):
    index = index_gtsrb(gtsrb_root)
    train, val = random_split(index.train, 0.2, seed=0)
    shared = {r.track for r in train} & {r.track for r in val}
    assert len(shared) > 1000  # nearly every track is on both sides: why data.split=random leaks


def test_data_dir_may_name_gtsrb_itself(gtsrb_root):
    assert detect_layout(gtsrb_root / "GTSRB")[0] == detect_layout(gtsrb_root)[0]


def test_split_is_seeded_and_stratified(synthetic_root):
    records = index_gtsrb(synthetic_root).train
    a = track_split(records, 0.34, seed=1)
    b = track_split(records, 0.34, seed=1)
    c = track_split(records, 0.34, seed=2)
    assert [r.path for r in a[1]] == [r.path for r in b[1]]
    assert [r.path for r in a[1]] != [r.path for r in c[1]]
    for side in a:
        assert {r.label for r in side} == set(range(43))
    with pytest.raises(ConfigError, match="val_fraction"):
        split_records(records, "track", 1.5)
    with pytest.raises(ConfigError, match="data.split"):
        split_records(records, "by_moon", 0.2)


def test_roi_crop_scales_box_of_a_rescaled_copy():
    image = np.zeros((35, 35, 3), np.uint8)
    image[10:25, 5:30] = 255
    # annotation for a 70x70 original: box x 10..59, y 20..49 (inclusive) -> 5..29, 10..24 here
    crop = roi_crop(image, (10, 20, 59, 49), (70, 70))
    assert crop.shape == (15, 25, 3)
    assert crop.min() == 255
    assert roi_crop(image, (5, 10, 29, 24), (35, 35)).shape == (15, 25, 3)


def test_missing_data_message(tmp_path):
    with pytest.raises(DataNotFoundError, match="GTSRB_ROOT|data.data_dir") as e:
        index_gtsrb(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    assert "download" in str(e.value)


def _class_dir(root: Path, label: int = 3) -> Path:
    return root / "GTSRB" / "Final_Training" / "Images" / f"{label:05d}"


def test_image_listed_but_missing(synthetic_copy):
    victim = sorted(_class_dir(synthetic_copy).glob("*.ppm"))[0]
    victim.unlink()
    bad = verify_records(index_gtsrb(synthetic_copy).train)
    assert len(bad) == 1 and victim.name in bad[0][1] and "missing" in bad[0][1]


def test_truncated_image(synthetic_copy):
    victim = sorted(_class_dir(synthetic_copy).glob("*.ppm"))[1]
    victim.write_bytes(victim.read_bytes()[:40])
    records = index_gtsrb(synthetic_copy).train
    assert verify_records(records) == []  # the header is intact: only decoding (on_bad_image=skip) finds it
    bad = verify_records(records, decode=True)
    assert len(bad) == 1 and victim.name in bad[0][1] and "truncated" in bad[0][1]
    with pytest.raises(BadDataError, match=victim.name):
        GTSRBDataset([r for r in records if r.path == str(victim)])[0]


def test_garbage_image_fails_with_its_name_on_decode(synthetic_copy):
    victim = sorted(_class_dir(synthetic_copy).glob("*.ppm"))[2]
    victim.write_bytes(b"this is not an image" * 10)
    records = index_gtsrb(synthetic_copy).train
    bad = verify_records(records)
    assert len(bad) == 1 and victim.name in bad[0][1]
    ds = GTSRBDataset([r for r in records if r.path == str(victim)])
    with pytest.raises(BadDataError, match=victim.name):
        ds[0]


def test_malformed_csv_row(synthetic_copy):
    gt = _class_dir(synthetic_copy) / "GT-00003.csv"
    lines = gt.read_text().splitlines()
    lines[2] = lines[2].rsplit(";", 2)[0]  # drop two fields
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadDataError, match=r"GT-00003.csv:3: malformed row"):
        index_gtsrb(synthetic_copy)


def test_non_integer_csv_value(synthetic_copy):
    gt = _class_dir(synthetic_copy) / "GT-00003.csv"
    text = gt.read_text().splitlines()
    fields = text[1].split(";")
    fields[-1] = "three"
    text[1] = ";".join(fields)
    gt.write_text("\n".join(text) + "\n")
    with pytest.raises(BadDataError, match="ClassId"):
        index_gtsrb(synthetic_copy)


def test_empty_class_folder(synthetic_copy):
    d = _class_dir(synthetic_copy, 7)
    for p in d.iterdir():
        p.unlink()
    with pytest.raises(BadDataError, match="00007.*empty"):
        index_gtsrb(synthetic_copy)


def test_unlisted_image_is_not_dropped_silently(synthetic_copy):
    d = _class_dir(synthetic_copy)
    src = sorted(d.glob("*.ppm"))[0]
    (d / "99999_00000.ppm").write_bytes(src.read_bytes())
    with pytest.raises(BadDataError, match="99999_00000.ppm"):
        index_gtsrb(synthetic_copy)


def test_stray_hidden_files_are_ignored(synthetic_copy):
    (_class_dir(synthetic_copy) / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (synthetic_copy / "GTSRB" / "Final_Training" / "Images" / ".DS_Store").write_bytes(b"\0")
    index = index_gtsrb(synthetic_copy)
    assert not any(".DS_Store" in r.path for r in index.train)
    assert verify_records(index.train) == []


def test_missing_real_data_skips_on_a_users_machine_and_fails_in_ci(monkeypatch, tmp_path):
    """The real-data fixture: a user without ../shared/gtsrb gets skips; CI (ALEXNET_GTSRB_REQUIRE_DATA=1) fails."""
    from tests.helpers import real_gtsrb_root

    monkeypatch.setenv("GTSRB_ROOT", str(tmp_path / "absent"))
    monkeypatch.delenv("ALEXNET_GTSRB_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="absent"):
        real_gtsrb_root()
    monkeypatch.setenv("ALEXNET_GTSRB_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="ALEXNET_GTSRB_REQUIRE_DATA=1"):
        real_gtsrb_root()
    monkeypatch.setenv("GTSRB_ROOT", str(tmp_path))
    assert real_gtsrb_root() == tmp_path

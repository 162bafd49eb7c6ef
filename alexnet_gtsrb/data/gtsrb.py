"""Find and parse a GTSRB tree (official, torchvision or Kaggle layout) into a list of records.

A record is one image: its path, label, track (``"CC_TTTTT"``, None for test images), the sign's ROI box
in the coordinates of the annotation, and the width and height the annotation declares. Nothing here
decodes pixels; :func:`verify_records` reads headers only, so it is cheap enough to run before training.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.data.io import image_size_from_header
from alexnet_gtsrb.errors import BadDataError, ConfigError, DataNotFoundError

LAYOUTS = ("auto", "official", "torchvision", "kaggle")
IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg")
GET_DATA_HELP = (
    "Get GTSRB with `python -m alexnet_gtsrb.data.download --root <dir>` (or set data.download=true), "
    "then point the project at it with `export GTSRB_ROOT=<dir>` or `data.data_dir=<dir>`; "
    "or run `experiment=demo` to train on generated synthetic data."
)
_TRACK_NAME = re.compile(r"^(?:(\d+)_)?(\d+)_(\d+)\.\w+$")


@dataclass(frozen=True, slots=True)
class Record:
    """One GTSRB image and its annotation."""

    path: str
    label: int
    track: str | None = None
    roi: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 (inclusive), annotation coordinates
    width: int | None = None  # size the annotation declares; the file may be a rescaled copy
    height: int | None = None


@dataclass(frozen=True)
class GTSRBIndex:
    """The training and official test records of one GTSRB tree."""

    root: Path
    layout: str
    train: tuple[Record, ...]
    test: tuple[Record, ...]


def _candidates(data_dir: Path) -> list[Path]:
    """The folder itself and the parents a user may have pointed at one level too deep or too shallow."""
    out = [data_dir]
    if data_dir.name.lower() == "gtsrb":
        out.append(data_dir.parent)
        if data_dir.parent.name.lower() == "gtsrb":
            out.append(data_dir.parent.parent)
    return out


def detect_layout(data_dir: str | os.PathLike, layout: str = "auto") -> tuple[Path, str]:
    """Return (root, layout) for a data dir; root is the folder the layout's paths are relative to."""
    if layout not in LAYOUTS:
        raise ConfigError(f"data.layout={layout!r} is not a known layout; allowed: {', '.join(LAYOUTS)}.")
    if data_dir is None or str(data_dir) in ("", "None", "null"):
        raise DataNotFoundError(
            "No GTSRB data configured: data.data_dir is empty and the environment variable GTSRB_ROOT "
            f"is not set. {GET_DATA_HELP}"
        )
    data_dir = Path(os.path.expanduser(str(data_dir))).resolve()
    checks = {
        "official": lambda r: (r / "GTSRB" / "Final_Training" / "Images").is_dir(),
        "torchvision": lambda r: (r / "gtsrb" / "GTSRB" / "Training").is_dir(),
        "kaggle": lambda r: (r / "Train.csv").is_file() and (r / "Train").is_dir(),
    }
    wanted = list(checks) if layout == "auto" else [layout]
    for root in _candidates(data_dir):
        for name in wanted:
            if checks[name](root):
                return root, name
    looked = "official GTSRB/Final_Training/Images, torchvision gtsrb/GTSRB/Training, Kaggle Train.csv + Train/"
    if layout != "auto":
        looked = f"the {layout} layout"
    state = "does not exist" if not data_dir.exists() else "holds no GTSRB tree"
    raise DataNotFoundError(f"GTSRB data not found: {data_dir} {state} (looked for {looked}). {GET_DATA_HELP}")


def _int(row: dict, key: str, where: str) -> int:
    try:
        return int(str(row[key]).strip())
    except (KeyError, TypeError, ValueError):
        raise BadDataError(
            f"{where}: column {key!r} is missing or not an integer (row: {row}). "
            "Fix or remove the row; the expected header is "
            "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId."
        ) from None


def _read_csv(path: Path, delimiter: str) -> list[tuple[int, dict]]:
    """Rows of an annotation CSV with their line numbers, rejecting rows with a wrong column count."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
            header = next(reader, None)
            if not header:
                raise BadDataError(f"{path}: empty annotation file. Restore it from the GTSRB archive.")
            header = [h.strip() for h in header]
            rows = []
            for line_no, values in enumerate(reader, start=2):
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise BadDataError(
                        f"{path}:{line_no}: malformed row {delimiter.join(values)!r} "
                        f"({len(values)} fields, the header has {len(header)}). Fix or remove the row."
                    )
                rows.append((line_no, dict(zip(header, values, strict=True))))
            return rows
    except OSError as e:
        raise BadDataError(f"{path}: cannot read annotation file ({e}).") from None


def _annotated(row: dict, where: str) -> tuple[tuple[int, int, int, int] | None, int | None, int | None]:
    if "Roi.X1" not in row:
        return None, None, None
    x1, y1, x2, y2 = (_int(row, k, where) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
    return (x1, y1, x2, y2), _int(row, "Width", where), _int(row, "Height", where)


def _label(row: dict, where: str) -> int:
    label = _int(row, "ClassId", where)
    if not 0 <= label < NUM_CLASSES:
        raise BadDataError(f"{where}: ClassId {label} is outside 0..{NUM_CLASSES - 1}. Fix the row.")
    return label


def _track_of(filename: str, label: int) -> str | None:
    m = _TRACK_NAME.match(filename)
    return f"{label:02d}_{int(m.group(2)):05d}" if m else None


def _listed(folder: Path, filenames: Iterable[str], csv_path: Path) -> None:
    """Fail on images present in a folder but absent from its CSV: they would be dropped silently."""
    on_disk = {p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    extra = sorted(on_disk - set(filenames))
    if extra:
        raise BadDataError(
            f"{csv_path}: {len(extra)} image(s) in {folder} are not listed, e.g. {extra[0]}. "
            "Add them to the CSV or remove them."
        )


def _official_train(images: Path, strict_folder_label: bool = True) -> list[Record]:
    class_dirs = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise BadDataError(f"{images}: no class folders (expected 00000 ... 00042). {GET_DATA_HELP}")
    records: list[Record] = []
    for d in class_dirs:
        if not d.name.isdigit():
            raise BadDataError(f"{d}: unexpected folder (class folders are named 00000 ... 00042).")
        folder_label = int(d.name)
        csv_path = d / f"GT-{d.name}.csv"
        if csv_path.is_file():
            rows = _read_csv(csv_path, ";")
            if not rows:
                raise BadDataError(f"{csv_path}: no rows; class folder {d.name} would be empty.")
            for line_no, row in rows:
                where = f"{csv_path}:{line_no}"
                label = _label(row, where)
                if strict_folder_label and label != folder_label:
                    raise BadDataError(f"{where}: ClassId {label} in the folder of class {folder_label}.")
                name = row["Filename"].strip()
                roi, w, h = _annotated(row, where)
                records.append(Record(str(d / name), label, _track_of(name, label), roi, w, h))
            _listed(d, (r["Filename"].strip() for _, r in rows), csv_path)
        else:
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BadDataError(f"{d}: empty class folder (no images and no GT-{d.name}.csv).")
            records += [Record(str(p), folder_label, _track_of(p.name, folder_label)) for p in files]
    return records


def _official_test(images: Path, gt_csv: Path) -> list[Record]:
    if not gt_csv.is_file():
        raise DataNotFoundError(
            f"Official test ground truth not found: {gt_csv}. It comes in GTSRB_Final_Test_GT.zip; {GET_DATA_HELP}"
        )
    rows = _read_csv(gt_csv, ";")
    records = []
    for line_no, row in rows:
        where = f"{gt_csv}:{line_no}"
        roi, w, h = _annotated(row, where)
        records.append(Record(str(images / row["Filename"].strip()), _label(row, where), None, roi, w, h))
    return records


def _kaggle(root: Path, csv_name: str, with_tracks: bool) -> list[Record]:
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise DataNotFoundError(f"{csv_path} not found (Kaggle layout). {GET_DATA_HELP}")
    records = []
    for line_no, row in _read_csv(csv_path, ","):
        where = f"{csv_path}:{line_no}"
        if "Path" not in row:
            raise BadDataError(f"{where}: no 'Path' column; is this the Kaggle GTSRB CSV?")
        label = _label(row, where)
        rel = row["Path"].strip()
        roi, w, h = _annotated(row, where)
        track = None
        if with_tracks:
            m = _TRACK_NAME.match(Path(rel).name)
            track = f"{label:02d}_{int(m.group(2)):05d}" if m else None
        records.append(Record(str(root / rel), label, track, roi, w, h))
    return records


def index_gtsrb(data_dir: str | os.PathLike, layout: str = "auto") -> GTSRBIndex:
    """Index the training and official test images of a GTSRB tree (layout auto-detected)."""
    root, layout = detect_layout(data_dir, layout)
    if layout == "official":
        base = root / "GTSRB"
        train = _official_train(base / "Final_Training" / "Images")
        test_dir = base / "Final_Test" / "Images"
        test = _official_test(test_dir, test_dir / "GT-final_test.csv")
    elif layout == "torchvision":
        base = root / "gtsrb"
        train = _official_train(base / "GTSRB" / "Training")
        test = _official_test(base / "GTSRB" / "Final_Test" / "Images", base / "GT-final_test.csv")
    else:
        train = _kaggle(root, "Train.csv", with_tracks=True)
        test = _kaggle(root, "Test.csv", with_tracks=False)
    if not train:
        raise BadDataError(f"{root}: no training images found. {GET_DATA_HELP}")
    return GTSRBIndex(root=root, layout=layout, train=tuple(train), test=tuple(test))


def verify_records(records: Sequence[Record]) -> list[tuple[Record, str]]:
    """Cheap header scan; returns (record, problem) for every bad file (empty when all are fine)."""
    bad = []
    for r in records:
        try:
            image_size_from_header(r.path)
        except BadDataError as e:
            bad.append((r, str(e)))
    return bad

"""Find and parse a GTSRB tree (official, torchvision or Kaggle layout) into records, one per image. Indexing
decodes no pixels; :func:`verify_records` reads every image's header, or decodes every image once."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.data.io import check_header, decode_rgb, roi_crop
from alexnet_gtsrb.errors import BadDataError, ConfigError, DataNotFoundError
from alexnet_gtsrb.utils.files import open_regular_file

LAYOUTS = ("auto", "official", "torchvision", "kaggle")
IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg")
GET_DATA_HELP = (
    "Get GTSRB with `python -m alexnet_gtsrb.data.download --root <dir>` (or set data.download=true), "
    "then point the project at it with `export GTSRB_ROOT=<dir>` or `data.data_dir=<dir>`; "
    "or run `experiment=demo` to train on generated synthetic data."
)
_TRACK_NAME = re.compile(r"^(?:(\d+)_)?(\d+)_(\d+)\.\w+$")
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
#: Annotation CSVs are small (GTSRB's largest, the Kaggle Train.csv, is ~2.5 MB); larger files are not read.
MAX_CSV_BYTES = 64 * 1024**2
BOX_COLUMNS = ("Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")
OFFICIAL_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
KAGGLE_HEADER = "Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path"
_RESTORE_TEST_GT = "Restore it from GTSRB_Final_Test_GT.zip (python -m alexnet_gtsrb.data.download)."
Resolve = Callable[[dict, str, Path], tuple[str, str]]  # (row, "file:line", base) -> (key, path) of a CSV row's file


@dataclass(frozen=True, slots=True)
class Record:
    """One GTSRB image and its annotation."""

    path: str
    label: int
    track: str | None = None  # "CC_TTTTT" (class, track) from a training file name; None for test images
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
        # the official layout may hold only the test set (download --only test): enough to evaluate
        "official": lambda r: any((r / "GTSRB" / p / "Images").is_dir() for p in ("Final_Training", "Final_Test")),
        "torchvision": lambda r: (r / "gtsrb" / "GTSRB" / "Training").is_dir(),
        "kaggle": lambda r: (r / "Train.csv").is_file() and (r / "Train").is_dir(),
    }
    wanted = list(checks) if layout == "auto" else [layout]
    candidates = [data_dir]  # and the parents a user may have pointed one or two "gtsrb" levels too deep at
    while candidates[-1].name.lower() == "gtsrb" and len(candidates) < 3:
        candidates.append(candidates[-1].parent)
    for root in candidates:
        for name in wanted:
            if checks[name](root):
                return root, name
    looked = "official GTSRB/Final_Training/Images, torchvision gtsrb/GTSRB/Training, Kaggle Train.csv + Train/"
    if layout != "auto":
        looked = f"the {layout} layout"
    state = "does not exist" if not data_dir.exists() else "holds no GTSRB tree"
    raise DataNotFoundError(f"GTSRB data not found: {data_dir} {state} (looked for {looked}). {GET_DATA_HELP}")


def _int(row: dict, key: str, where: str) -> int:
    value = str(row.get(key, "")).strip()
    if not _INTEGER.fullmatch(value):
        raise BadDataError(
            f"{where}: column {key!r} is missing or not an integer ({value[:40]!r}). Fix or remove the row."
        )
    return int(value)


def _decoded(path: Path) -> str:
    """The CSV's text; BadDataError naming the file and the absolute byte offset of the first non-UTF-8 byte."""
    try:  # a pipe or folder: refused
        _, f = open_regular_file(
            path, "annotation file", MAX_CSV_BYTES, "Restore it from the GTSRB archive.", BadDataError
        )
        with f:
            data = f.read(MAX_CSV_BYTES + 1)
    except OSError as e:
        raise BadDataError(f"{path}: cannot read annotation file ({e.strerror or e}).") from None
    if len(data) > MAX_CSV_BYTES:
        raise BadDataError(
            f"{path}: annotation file is over {MAX_CSV_BYTES:,} bytes (GTSRB's are a few MB at most); "
            "not read. Restore it from the GTSRB archive."
        )
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise BadDataError(
            f"{path}: not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}). "
            "Save the annotation file as UTF-8 (GTSRB's are plain ASCII) or restore it from the archive."
        ) from None


def _read_csv(
    path: Path, delimiter: str, required: Sequence[str] = (), expected: str = OFFICIAL_HEADER
) -> list[tuple[int, dict]]:
    """Rows of an annotation CSV with their line numbers. The header must hold every ``required`` column, all of
    :data:`BOX_COLUMNS` if any, no name twice, and every row its width; else BadDataError naming file and line."""
    reader = csv.reader(io.StringIO(_decoded(path), newline=""), delimiter=delimiter, skipinitialspace=True)
    rows: list[tuple[int, dict]] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise BadDataError(f"{path}: empty annotation file. Restore it from the GTSRB archive.")
        twice = sorted({h for h in header if header.count(h) > 1})
        wanted = list(required) + (list(BOX_COLUMNS) if any(c in header for c in BOX_COLUMNS) else [])
        missing = [c for c in wanted if c not in header]
        if twice or missing:
            problem = f"lacks column(s) {', '.join(missing)}" if missing else f"repeats column(s) {', '.join(twice)}"
            raise BadDataError(f"{path}:1: the header {problem}; the expected header is {expected}. Fix line 1.")
        while True:
            line_no = reader.line_num + 1
            values = next(reader, None)
            if values is None:
                return rows
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                shown = delimiter.join(values)[:200]
                raise BadDataError(
                    f"{path}:{line_no}: malformed row {shown!r} "
                    f"({len(values)} fields, the header has {len(header)}). Fix or remove the row."
                )
            rows.append((line_no, dict(zip(header, values, strict=True))))
    except csv.Error as e:
        raise BadDataError(f"{path}:{reader.line_num}: unreadable CSV ({e}). Fix or remove the row.") from None


def _annotated(row: dict, where: str) -> tuple[tuple[int, int, int, int] | None, int | None, int | None]:
    """(ROI, declared width, declared height); the ROI must lie inside the declared size, corners in order."""
    if "Roi.X1" not in row:
        return None, None, None
    x1, y1, x2, y2 = (_int(row, k, where) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
    w, h = _int(row, "Width", where), _int(row, "Height", where)
    problem = None
    if w < 1 or h < 1:
        problem = f"declared size Width x Height = {w}x{h} is empty"
    elif x2 < x1 or y2 < y1:
        problem = f"ROI ({x1},{y1})-({x2},{y2}) is inverted"
    elif x1 < 0 or y1 < 0 or x2 >= w or y2 >= h:
        problem = f"ROI ({x1},{y1})-({x2},{y2}) lies outside the declared {w}x{h} image"
    if problem:
        raise BadDataError(
            f"{where}: {problem}; a row needs 0 <= Roi.X1 <= Roi.X2 < Width and 0 <= Roi.Y1 <= Roi.Y2 < Height "
            "(inclusive corners, in pixels of the declared size). Fix the row's Roi.*/Width/Height or remove it."
        )
    return (x1, y1, x2, y2), w, h


def _plain_name(row: dict, where: str, folder: Path) -> tuple[str, str]:
    """(name, path) of the row's Filename, which must name a file directly inside ``folder`` (no path, no ``..``)."""
    name = row["Filename"].strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or PurePath(name).name != name:
        raise BadDataError(
            f"{where}: Filename {name[:100]!r} is not a plain file name; annotations may only name files "
            f"inside their folder ({folder}). Fix the row."
        )
    return name, str(folder / name)


def _inside(row: dict, where: str, root: Path) -> tuple[str, str]:
    """(normalised, joined) Kaggle ``Path``; it must stay inside the data root (not absolute, no escaping ``..``)."""
    rel = row["Path"].strip()
    norm = os.path.normpath(rel) if rel and "\0" not in rel else ""
    if not norm or PurePath(rel).anchor or norm in (".", os.pardir) or norm.startswith(os.pardir + os.sep):
        raise BadDataError(
            f"{where}: Path {rel[:100]!r} resolves outside the data root {root}; annotations may only name "
            "files inside it. Fix the row."
        )
    return norm, str(root / rel)


def _track_of(filename: str, label: int) -> str | None:
    m = _TRACK_NAME.match(filename)
    return f"{label:02d}_{int(m.group(2)):05d}" if m else None


def _csv_records(
    rows: list[tuple[int, dict]], csv_path: Path, base: Path, resolve: Resolve, folder: int | None, tracks: bool = True
) -> list[Record]:
    """Records of an annotation CSV's rows: each file (``resolve``d inside ``base``) listed once, labels in range
    (and ``folder``, the class folder's label, when given), ROIs inside the declared size; with ``tracks``, tracks
    from the names."""
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line_no, row in rows:
        where = f"{csv_path}:{line_no}"
        key, path = resolve(row, where, base)
        if key in seen:
            raise BadDataError(
                f"{csv_path}: {key} is listed twice, on lines {seen[key]} and {line_no}; "
                "it would count twice. Remove one of the rows."
            )
        seen[key] = line_no
        label = _int(row, "ClassId", where)
        if not 0 <= label < NUM_CLASSES:
            raise BadDataError(f"{where}: ClassId {label} is outside 0..{NUM_CLASSES - 1}. Fix the row.")
        if folder is not None and label != folder:
            raise BadDataError(f"{where}: ClassId {label} in the folder of class {folder}.")
        roi, w, h = _annotated(row, where)
        records.append(Record(path, label, _track_of(Path(path).name, label) if tracks else None, roi, w, h))
    return records


def _official_train(images: Path) -> list[Record]:
    class_dirs = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise BadDataError(f"{images}: no class folders (expected 00000 ... 00042). {GET_DATA_HELP}")
    records: list[Record] = []
    for d in class_dirs:
        if not d.name.isdigit():
            raise BadDataError(f"{d}: unexpected folder (class folders are named 00000 ... 00042).")
        label, csv_path = int(d.name), d / f"GT-{d.name}.csv"
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not csv_path.is_file():
            if not files:
                raise BadDataError(f"{d}: empty class folder (no images and no GT-{d.name}.csv).")
            records += [Record(str(p), label, _track_of(p.name, label)) for p in files]
            continue
        rows = _read_csv(csv_path, ";", ("Filename", "ClassId"))
        if not rows:
            raise BadDataError(f"{csv_path}: no rows; class folder {d.name} would be empty.")
        listed = _csv_records(rows, csv_path, d, _plain_name, label)
        extra = sorted({p.name for p in files} - {Path(r.path).name for r in listed})  # else dropped silently
        if extra:
            raise BadDataError(
                f"{csv_path}: {len(extra)} image(s) in {d} are not listed, e.g. {extra[0]}. "
                "Add them to the CSV or remove them."
            )
        records += listed
    return records


def _official_test(images: Path, gt_csv: Path) -> list[Record]:
    if not gt_csv.is_file():
        raise DataNotFoundError(
            f"Official test ground truth not found: {gt_csv}. It comes in GTSRB_Final_Test_GT.zip; {GET_DATA_HELP}"
        )
    rows = _read_csv(gt_csv, ";", ("Filename", "ClassId"))
    if not rows:
        raise BadDataError(f"no test images listed in {gt_csv} (it holds no rows). {_RESTORE_TEST_GT}")
    return _csv_records(rows, gt_csv, images, _plain_name, None, tracks=False)


def _kaggle(root: Path, csv_name: str, test: bool) -> list[Record]:
    """Records of the Kaggle layout's Train.csv or Test.csv (tracks from the training file names)."""
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise DataNotFoundError(f"{csv_path} not found (Kaggle layout). {GET_DATA_HELP}")
    rows = _read_csv(csv_path, ",", ("Path", "ClassId"), KAGGLE_HEADER)
    if not rows and test:
        raise BadDataError(f"no test images listed in {csv_path} (it holds no rows). Restore it from the archive.")
    return _csv_records(rows, csv_path, root, _inside, None, tracks=not test)


def index_gtsrb(data_dir: str | os.PathLike, layout: str = "auto", need_train: bool = True) -> GTSRBIndex:
    """Index the training and official test images of a GTSRB tree (layout auto-detected).

    With ``need_train=False`` (evaluating a checkpoint) an official tree holding only the test set is enough.
    """
    root, layout = detect_layout(data_dir, layout)
    if layout == "official":
        base = root / "GTSRB"
        train_dir = base / "Final_Training" / "Images"
        if not train_dir.is_dir() and need_train:
            raise DataNotFoundError(
                f"{root} holds only the official test set ({train_dir} is missing): enough for evaluate, not for "
                f"training. Add the training images with `python -m alexnet_gtsrb.data.download --root {root}`."
            )
        train = _official_train(train_dir) if train_dir.is_dir() else []
        test_dir = base / "Final_Test" / "Images"
        test = _official_test(test_dir, test_dir / "GT-final_test.csv")
    elif layout == "torchvision":
        base = root / "gtsrb"
        train = _official_train(base / "GTSRB" / "Training")
        test = _official_test(base / "GTSRB" / "Final_Test" / "Images", base / "GT-final_test.csv")
    else:
        train = _kaggle(root, "Train.csv", test=False)
        test = _kaggle(root, "Test.csv", test=True)
        both = {os.path.normpath(r.path) for r in train} & {os.path.normpath(r.path) for r in test}
        if both:
            raise BadDataError(
                f"{root / 'Test.csv'}: {len(both)} image(s) are also listed in Train.csv, e.g. {min(both)}; "
                "a test image must not be trained on. Remove them from one of the files."
            )
    if not train and need_train:
        raise BadDataError(f"{root}: no training images found. {GET_DATA_HELP}")
    return GTSRBIndex(root=root, layout=layout, train=tuple(train), test=tuple(test))


def load_cropped(r: Record, roi: bool) -> np.ndarray:
    """The record's image decoded (uint8 RGB) and, with ``roi``, cropped to its annotated sign box."""
    image = decode_rgb(r.path)
    return roi_crop(image, r.roi, (r.width, r.height)) if roi and r.roi is not None else image


def verify_records(records: Sequence[Record], decode: bool = False) -> list[tuple[Record, str]]:
    """(record, problem) for every image whose file or header is refused; with ``decode`` each file is decoded
    once, so a corrupt body is found before training starts, not in a batch (seconds for GTSRB's 25,500)."""
    bad = []
    for r in records:
        try:
            decode_rgb(r.path) if decode else check_header(r.path)
        except BadDataError as e:
            bad.append((r, str(e)))
    return bad

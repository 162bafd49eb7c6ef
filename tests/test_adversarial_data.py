"""Hostile data files: every one is refused by name (one line, CSV:line or byte offset) before it does harm.

Annotation CSVs that are not UTF-8, name files outside their folder, list an image twice, carry impossible
ROIs, lack columns or list no test images; images whose headers declare huge sizes (PPM, a real 1.1 MB PNG
bomb, JPEG), a 2 GB sparse file, a pipe. Unit-level calls, plus the two commands a user types: one training run
(a hostile test image with data.verify=false: exit 2 naming it) and one predict run (bad files skipped by name,
good ones predicted, bounded memory), which uses the checkpoint that training left behind.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from alexnet_gtsrb.data import io as image_io
from alexnet_gtsrb.data.datamodule import GTSRBDataModule
from alexnet_gtsrb.data.dataset import GTSRBDataset
from alexnet_gtsrb.data.gtsrb import Record, index_gtsrb, verify_records
from alexnet_gtsrb.data.io import decode_rgb
from alexnet_gtsrb.errors import BadDataError
from tests.helpers import ROOT, run_train, tiny_overrides

HUGE_PPM = b"P6\n6000 5000\n255\n" + b"\0" * 64  # 30 MP: over our limit, under Pillow's own
KAGGLE_HEADER = "Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path"


def _class_dir(root: Path, label: int = 3) -> Path:
    return root / "GTSRB" / "Final_Training" / "Images" / f"{label:05d}"


def _gt(root: Path) -> Path:
    return _class_dir(root) / "GT-00003.csv"


def _test_csv(root: Path) -> Path:
    return root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"


def _edit(csv_path: Path, line_no: int, **fields) -> list[str]:
    """Set fields of one row (1-based line) of an official semicolon CSV; returns the new lines."""
    lines = csv_path.read_text().splitlines()
    header, values = lines[0].split(";"), lines[line_no - 1].split(";")
    for key, value in fields.items():
        values[header.index(key)] = str(value)
    lines[line_no - 1] = ";".join(values)
    csv_path.write_text("\n".join(lines) + "\n")
    return lines


def _refused(match: str, call, *args) -> str:
    """The one-line BadDataError message of call(*args), which must match ``match``."""
    with pytest.raises(BadDataError, match=match) as e:
        call(*args)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- annotation CSVs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bom", [False, True])
def test_csv_that_is_not_utf8_names_the_absolute_byte_offset(synthetic_copy, bom):
    gt = _gt(synthetic_copy)
    data = (b"\xef\xbb\xbf" if bom else b"") + gt.read_bytes()
    offset = data.index(b"\n", data.index(b"\n") + 1) + 3  # inside line 3's Filename
    gt.write_bytes(data[:offset] + b"\xff" + data[offset + 1 :])
    message = _refused("not UTF-8", index_gtsrb, synthetic_copy)
    assert message.startswith(f"{gt}: ") and f"byte offset {offset} (line 3)" in message and "0xff" in message


@pytest.mark.parametrize("name", ["../../somewhere.ppm", "ABSOLUTE", "sub/00000_00000.ppm", "..", ""])
def test_csv_may_only_name_files_inside_its_folder(synthetic_copy, name):
    outside = synthetic_copy / "GTSRB" / "Final_Training" / "somewhere.ppm"  # what ../../ reaches: a real image
    shutil.copy(sorted(_class_dir(synthetic_copy).glob("*.ppm"))[0], outside)
    name = str(outside) if name == "ABSOLUTE" else name
    gt = _gt(synthetic_copy)
    _edit(gt, 2, Filename=name)
    message = _refused("only name files inside their folder", index_gtsrb, synthetic_copy)
    assert message.startswith(f"{gt}:2: ")
    test_copy = _test_csv(synthetic_copy)
    _edit(gt, 2, Filename=sorted(_class_dir(synthetic_copy).glob("*.ppm"))[0].name)  # repaired
    _edit(test_copy, 5, Filename="../../Final_Training/somewhere.ppm")
    assert _refused("inside their folder", index_gtsrb, synthetic_copy).startswith(f"{test_copy}:5: ")


def _kaggle_tree(root: Path, train_paths: list[str], test_paths: list[str]) -> Path:
    (root / "Train").mkdir(parents=True)
    for name, paths in (("Train.csv", train_paths), ("Test.csv", test_paths)):
        rows = [f"35,35,5,5,29,29,{i % 43},{p}" for i, p in enumerate(paths)]
        (root / name).write_text("\n".join([KAGGLE_HEADER, *rows]) + "\n")
    return root


@pytest.mark.parametrize("hostile", ["Train/../../outside.png", "/etc/hostname", "Train/0/../../../x.png", ".."])
def test_kaggle_path_may_not_resolve_outside_the_root(tmp_path, hostile):
    root = _kaggle_tree(tmp_path / "kg", ["Train/0/00000_00000_00000.png", hostile], ["Test/00000.png"])
    assert _refused("outside the data root", index_gtsrb, root).startswith(f"{root / 'Train.csv'}:3: ")


def test_kaggle_path_with_dots_that_stays_inside_is_fine(tmp_path):
    root = _kaggle_tree(
        tmp_path / "kg", ["Train/0/./00000_00000_00000.png", "Train/1/../1/01_00007_00000.png"], ["Test/0.png"]
    )
    assert [r.track for r in index_gtsrb(root).train] == ["00_00000", "01_00007"]


def test_image_listed_twice_names_both_lines(synthetic_copy, tmp_path):
    gt = _gt(synthetic_copy)
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join([*lines, lines[2]]) + "\n")  # line 3 again, as the last line
    name = lines[2].split(";")[0]
    _refused(rf"GT-00003.csv: {name} is listed twice, on lines 3 and {len(lines) + 1}", index_gtsrb, synthetic_copy)
    kaggle = _kaggle_tree(tmp_path / "kg", ["Train/0/a.png", "Train/1/b.png", "Train/0/./a.png"], ["Test/0.png"])
    _refused(r"Train.csv: Train/0/a.png is listed twice, on lines 2 and 4", index_gtsrb, kaggle)
    leak = _kaggle_tree(tmp_path / "leak", ["Train/0/a.png"], ["Test/0.png", "Train/0/a.png"])
    _refused(r"Test.csv: 1 image\(s\) are also listed in Train.csv", index_gtsrb, leak)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"Roi.X2": 40, "Width": 40}, "outside the declared 40x"),  # x2 == Width: one past the last pixel
        ({"Roi.Y1": -1}, "outside the declared"),
        ({"Roi.X1": 20, "Roi.X2": 10}, "is inverted"),
        ({"Roi.Y1": 20, "Roi.Y2": 19}, "is inverted"),
        ({"Width": 0}, "is empty"),
    ],
)
def test_roi_outside_the_declared_size_or_inverted(synthetic_copy, fields, problem):
    gt = _gt(synthetic_copy)
    _edit(gt, 4, **fields)
    message = _refused(problem, index_gtsrb, synthetic_copy)
    assert message.startswith(f"{gt}:4: ") and "0 <= Roi.X1 <= Roi.X2 < Width" in message and "Fix the row" in message


def test_roi_touching_the_last_pixel_is_fine(synthetic_copy):
    gt = _gt(synthetic_copy)
    name = _edit(gt, 2, Width=50, Height=60, **{"Roi.X1": 0, "Roi.Y1": 0, "Roi.X2": 49, "Roi.Y2": 59})[1].split(";")[0]
    record = next(r for r in index_gtsrb(synthetic_copy).train if r.path == str(gt.parent / name))
    assert (record.roi, record.width, record.height) == ((0, 0, 49, 59), 50, 60)


def test_header_only_test_csv_fails_when_indexing_before_training(synthetic_copy, tmp_path):
    csv_path = _test_csv(synthetic_copy)
    csv_path.write_text(csv_path.read_text().splitlines()[0] + "\n")
    _refused(f"^no test images listed in {csv_path}", index_gtsrb, synthetic_copy)
    dm = GTSRBDataModule(str(synthetic_copy), image_size=67, num_workers=0)
    with pytest.raises(BadDataError, match="no test images listed"):
        dm.setup("fit")  # training never starts
    assert dm.train_set is None
    kaggle = _kaggle_tree(tmp_path / "kg", ["Train/0/a.png"], [])
    _refused(f"^no test images listed in {kaggle / 'Test.csv'}", index_gtsrb, kaggle)


@pytest.mark.parametrize(
    ("rename", "missing"),
    [({"Filename": "File"}, "Filename"), ({"ClassId": "Class"}, "ClassId"), ({"Roi.X2": "RoiX2"}, "Roi.X2")],
)
def test_header_without_a_needed_column(synthetic_copy, rename, missing):
    gt = _gt(synthetic_copy)
    lines = gt.read_text().splitlines()
    for old, new in rename.items():
        lines[0] = lines[0].replace(old, new)
    gt.write_text("\n".join(lines) + "\n")
    message = _refused(f"lacks column\\(s\\) {missing}", index_gtsrb, synthetic_copy)
    assert message.startswith(f"{gt}:1: ") and "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId" in message


def test_kaggle_header_without_path(tmp_path):
    root = _kaggle_tree(tmp_path / "kg", ["Train/0/a.png"], ["Test/0.png"])
    (root / "Train.csv").write_text((root / "Train.csv").read_text().replace(",Path", ",File"))
    assert "Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path" in _refused("lacks column", index_gtsrb, root)


# -- image files: caps checked before reading / decoding --------------------------------------------------------
def _png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid ~1.1 MB PNG of side x side black RGB pixels (1.2 GB decoded), built without that memory.

    Raw deflate blocks ending in a full flush do not refer to earlier data, so one compressed block of 16
    zero rows, repeated, is a valid stream; the Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    rows = b"\0" * (1 + 3 * side) * 16  # filter byte + RGB per row
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    n = len(rows) * (side // 16)
    stream = b"\x78\xda" + block * (side // 16) + deflate.flush() + struct.pack(">I", (n % 65521) << 16 | 1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path


def _jpeg(width: int = 6, height: int = 4, declared: tuple[int, int] | None = None, comments: int = 0) -> bytes:
    """A real JPEG; ``declared`` patches its SOF0 size; ``comments`` 60 KB COM segments go before the frame."""
    data = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))[1].tobytes()
    com = b"\xff\xfe" + struct.pack(">H", 60002) + b"c" * 60000
    data = data[:2] + com * comments + data[2:]
    if declared is not None:
        sof = data.index(b"\xff\xc0")
        data = data[: sof + 5] + struct.pack(">HH", declared[1], declared[0]) + data[sof + 9 :]
    return data


def _sparse(path: Path, size: int = 2 * 1024**3) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # 2 GB that use no disk
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("huge.ppm", lambda p: p.write_bytes(HUGE_PPM), "its PPM header declares 6000x5000 = 30,000,000 pixels"),
        ("bomb.png", _png_bomb, "more pixels than Pillow's decompression-bomb limit"),
        ("huge.jpg", lambda p: p.write_bytes(_jpeg(declared=(60000, 60000))), "decompression-bomb limit"),
        ("sparse.ppm", _sparse, "2,147,483,648 bytes is over the limit"),
    ],
)
def test_limits_refuse_before_reading_or_decoding(tmp_path, name, make, match):
    path = tmp_path / name
    make(path)
    before, start = _peak_rss_mb(), time.perf_counter()
    message = _refused(match, decode_rgb, str(path))
    assert message.startswith(f"{path}: ") and ("refused before decoding" in message or "without reading" in message)
    assert time.perf_counter() - start < 2.0 and _peak_rss_mb() - before < 100  # nothing big was read
    bad = verify_records([Record(str(path), 0)])  # verifying the index says the same
    assert len(bad) == 1 and bad[0][1] == message


@pytest.mark.parametrize("ext", [".ppm", ".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_pixel_and_byte_limits_at_their_boundary(tmp_path, monkeypatch, ext):
    path = tmp_path / f"img{ext}"
    path.write_bytes(cv2.imencode(ext, np.zeros((5, 7, 3), np.uint8))[1].tobytes())
    monkeypatch.setattr(image_io, "MAX_PIXELS", 35)
    assert decode_rgb(str(path)).shape == (5, 7, 3)
    monkeypatch.setattr(image_io, "MAX_PIXELS", 34)
    _refused("header declares 7x5 = 35 pixels, over the limit of 34; refused before decoding", decode_rgb, str(path))
    monkeypatch.setattr(image_io, "MAX_PIXELS", 35)
    monkeypatch.setattr(image_io, "MAX_FILE_BYTES", path.stat().st_size - 1)
    _refused(f"over the limit of {path.stat().st_size - 1:,}; refused without reading", decode_rgb, str(path))


def test_jpeg_frame_header_beyond_the_first_64_kib(tmp_path):
    path = tmp_path / "commented.jpg"
    path.write_bytes(_jpeg(comments=2))
    assert decode_rgb(str(path)).shape == (4, 6, 3)


def test_a_pipe_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.ppm"
    os.mkfifo(fifo)
    _refused("not a regular file", decode_rgb, str(fifo))


def test_a_huge_image_is_refused_by_verifying_the_dataset_and_the_cache(synthetic_copy, tmp_path):
    """data.verify=true names it before training; skip leaves it out; unverified, the dataset and the image
    cache refuse it by name when they reach it."""
    victim = sorted(_class_dir(synthetic_copy).glob("*.ppm"))[0]
    victim.write_bytes(HUGE_PPM)
    records = [r for r in index_gtsrb(synthetic_copy).train if r.path == str(victim)]
    dataset = pickle.loads(pickle.dumps(GTSRBDataset(records)))  # what a DataLoader worker receives
    _refused(f"{victim}: its PPM header declares 6000x5000", dataset.__getitem__, 0)
    dm = GTSRBDataModule(str(synthetic_copy), image_size=67, num_workers=0)
    message = _refused(f"^{victim}: its PPM header declares 6000x5000", dm.setup, "fit")
    assert message.endswith("Or set data.on_bad_image=skip to leave bad files out.")
    dm = GTSRBDataModule(str(synthetic_copy), image_size=67, num_workers=0, on_bad_image="skip")
    dm.setup("fit")
    assert str(victim) not in {r.path for r in dm.train_set.records + dm.val_set.records}
    cached = GTSRBDataModule(str(synthetic_copy), image_size=32, num_workers=0, verify=False, cache=True,
                             cache_dir=str(tmp_path / "cache"))  # fmt: skip
    _refused(f"^{victim}: its PPM header declares 6000x5000 .* \\(found while building the image cache\\)$",
             cached.setup, "fit")  # fmt: skip


# -- the two commands a user types ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_training(synthetic_root, tmp_path_factory):
    """One training run (data.verify=false) whose first official test image declares 6000x5000 pixels."""
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(synthetic_root / "GTSRB", root / "GTSRB")
    victim = root / "GTSRB" / "Final_Test" / "Images" / "00000.ppm"
    victim.write_bytes(HUGE_PPM)
    run_dir = root / "run"
    extra = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    proc = run_train([*tiny_overrides(root), "data.verify=false", *extra, f"hydra.run.dir={run_dir}"])
    return proc, run_dir, victim


@pytest.mark.slow
def test_training_stops_with_exit_2_naming_the_hostile_test_image(hostile_training):
    proc, run_dir, victim = hostile_training
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {victim}: its PPM header declares 6000x5000") and "refused" in last
    assert "test/acc" not in proc.stdout and (run_dir / "checkpoints" / "last.ckpt").is_file()


def _run_measured(args: list[str], out_dir: Path, timeout: float = 300) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, peak RSS in MB, seconds) of ``python *args``; the peak is this child's own
    (os.wait4), not the largest of all the children the test session ran."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out, err = out_dir / "stdout.txt", out_dir / "stderr.txt"
    start = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=fo, stderr=fe)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss / 1024, time.perf_counter() - start


@pytest.mark.slow
def test_predict_skips_hostile_files_by_name_with_bounded_memory(hostile_training, synthetic_root, tmp_path):
    _, run_dir, _ = hostile_training
    good = sorted((synthetic_root / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))[:2]
    huge = tmp_path / "huge.ppm"
    huge.write_bytes(HUGE_PPM)
    bomb = _png_bomb(tmp_path / "bomb.png")
    assert 1_000_000 < bomb.stat().st_size < 1_300_000
    sparse = _sparse(tmp_path / "sparse.png")
    files = [huge, good[0], bomb, sparse, good[1]]
    args = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"images=[{','.join(map(str, files))}]"]
    rc, stdout, stderr, peak_mb, seconds = _run_measured(
        ["-m", "alexnet_gtsrb.predict", *args, "format=json", "device=cpu", f"hydra.run.dir={tmp_path}/p"], tmp_path
    )
    assert rc == 0, stderr[-3000:]
    assert [r["file"] for r in json.loads(stdout)] == [str(p) for p in good]
    skipped = [line for line in stderr.splitlines() if line.startswith("skipped: ")]
    assert [line.split(": ")[1] for line in skipped] == [str(huge), str(bomb), str(sparse)]
    assert "6000x5000" in skipped[0] and "decompression-bomb" in skipped[1] and "2,147,483,648 bytes" in skipped[2]
    assert "Traceback" not in stderr
    assert seconds < 120
    # The peak is that of importing torch and Lightning (~1.1 GB here): the hostile files add nothing. Reading
    # the sparse file would add 2 GB, decoding the bomb 1.2 GB (3.4 GB RSS before the caps).
    base_mb = _run_measured(["-c", "import alexnet_gtsrb.predict"], tmp_path / "imports")[3]
    assert peak_mb - base_mb < 400, f"predict peaked at {peak_mb:.0f} MB, its imports alone at {base_mb:.0f} MB"


@pytest.mark.slow
def test_a_test_only_tree_is_enough_to_evaluate_but_not_to_train(synthetic_root, tiny_run, tmp_path):
    """download --only test leaves GTSRB/Final_Test only: evaluate works on it; train names what is missing."""
    from tests.helpers import run_module, run_train, tiny_overrides

    root = tmp_path / "test_only"
    shutil.copytree(synthetic_root / "GTSRB" / "Final_Test", root / "GTSRB" / "Final_Test")
    ckpt = tiny_run.dir / "checkpoints" / "last.ckpt"
    done = run_module("evaluate", [f"ckpt_path={ckpt}", f"data.data_dir={root}", f"hydra.run.dir={tmp_path}/e"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_images"] == len(
        list((root / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))
    )
    refused = run_train([*tiny_overrides(synthetic_root), f"data.data_dir={root}", f"hydra.run.dir={tmp_path}/t"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds only the official test set" in refused.stderr and "alexnet_gtsrb.data.download" in refused.stderr


def test_a_header_between_pillows_warning_and_error_limits_gives_only_our_line(tmp_path):
    """100 MP lies between Pillow's DecompressionBombWarning (~89 MP) and its error (~179 MP): one BadDataError,
    no warning printed beside it."""
    import warnings

    big = tmp_path / "big.ppm"
    big.write_bytes(b"P6\n10000 10000\n255\n" + b"\0" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for read in (image_io.check_header, image_io.decode_rgb):
            with pytest.raises(BadDataError, match="10000x10000 = 100,000,000 pixels"):
                read(str(big))

"""``generate(root)``: the synthetic tree in the official layout, its completion marker, atomic installation::

    <root>/GTSRB/Final_Training/Images/000NN/TTTTT_FFFFF.ppm   + GT-000NN.csv   (43 class folders)
    <root>/GTSRB/Final_Test/Images/NNNNN.ppm                   + GT-final_test.csv
    <root>/.synthetic_complete.json                            (parameters; written last)

Built in a temporary sibling folder and renamed into place, so an interrupted run never leaves a tree that looks
complete; a tree with the same parameters is reused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.data.synthetic.render import MAX_SIGN_SIDE, MIN_SIGN_SIDE, Frame, render_track
from alexnet_gtsrb.errors import BadFileError
from alexnet_gtsrb.utils.files import cache_root, read_text_file

FORMAT_VERSION = 1  # bump when the drawing or layout changes, so cached trees from older code are regenerated
MARKER_NAME = ".synthetic_complete.json"
CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
STALE_TEMP_SECONDS = 3600  # temp trees older than this are leftovers of killed runs
Item = tuple[str, int, Frame]  # file name, class id, (image, roi)


def default_synthetic_root(
    train_tracks_per_class: int = 6, frames_per_track: int = 5, test_per_class: int = 5, seed: int = 0
) -> Path:
    """``<cache root>/synthetic/<settings>-v<format>``: one folder per setting, so a run generating other settings
    never replaces the tree a running job reads."""
    name = f"tracks{int(train_tracks_per_class)}-frames{int(frames_per_track)}-test{int(test_per_class)}"
    return cache_root() / "synthetic" / f"{name}-seed{int(seed)}-v{FORMAT_VERSION}"


def _write_image(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(path)  # binary PPM (P6) by the suffix


def _write_split(folder: Path, csv_name: str, images: Iterable[Item]) -> int:
    """Write the images and their annotation file; returns the image count."""
    folder.mkdir(parents=True)
    rows = [CSV_HEADER]
    for name, class_id, (img, roi) in images:
        _write_image(folder / name, img)
        rows.append(";".join(str(v) for v in (name, img.shape[1], img.shape[0], *roi, class_id)))
    (folder / csv_name).write_text("\n".join(rows) + "\n", encoding="utf-8", newline="\n")
    return len(rows) - 1


def _training_images(seed: int, class_id: int, tracks: int, frames: int) -> Iterator[Item]:
    """One class's tracks: each a sign approaching the camera, growing from frame to frame."""
    for track in range(tracks):
        rng = np.random.default_rng([seed, 0, class_id, track])
        first = rng.uniform(MIN_SIGN_SIDE, 45)
        last = min(MAX_SIGN_SIDE, first * rng.uniform(1.3, 2.2))
        sizes = list(np.linspace(first, last, frames)) if frames > 1 else [rng.uniform(MIN_SIGN_SIDE, MAX_SIGN_SIDE)]
        for frame, shot in enumerate(render_track(rng, class_id, sizes)):
            yield f"{track:05d}_{frame:05d}.ppm", class_id, shot


def _test_images(seed: int, per_class: int) -> Iterator[Item]:
    """Every test image an independent sign; classes shuffled, files numbered in order."""
    for i, j in enumerate(np.random.default_rng([seed, 2]).permutation(NUM_CLASSES * per_class)):
        class_id, k = divmod(int(j), per_class)
        rng = np.random.default_rng([seed, 1, class_id, k])
        yield f"{i:05d}.ppm", class_id, render_track(rng, class_id, [rng.uniform(MIN_SIGN_SIDE, MAX_SIGN_SIDE)])[0]


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    """True when root holds a finished tree made with exactly these parameters by this format."""
    try:
        marker = json.loads(read_text_file(root / MARKER_NAME, "synthetic tree marker"))
    except (OSError, ValueError, BadFileError):  # absent, unreadable, a pipe or oversized: as good as none
        return False
    ours = isinstance(marker, dict) and marker.get("format_version") == FORMAT_VERSION
    return ours and marker.get("params") == params and (root / "GTSRB").is_dir()


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything this generator did not make (never delete a user's data)."""
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise FileExistsError(f"{root} exists and is not a directory; pick another root for synthetic data.")
    if root.exists() and not (root / MARKER_NAME).is_file() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and was not produced by the synthetic generator (no {MARKER_NAME}); "
            "refusing to replace it. Pick another root, or delete the folder yourself."
        )


def _install(tmp: Path, root: Path, params: dict[str, int], overwrite: bool = False) -> bool:
    """Rename the finished tmp tree to root atomically; False (tmp untouched) if another process won."""
    last: OSError | None = None
    for _ in range(10):
        try:
            os.replace(tmp, root)  # atomic; succeeds when root is absent (or an empty folder on POSIX)
            return True
        except OSError as e:
            last = e
            if not root.exists():
                continue
        if not overwrite and _is_complete(root, params):
            return False  # a concurrent run finished first with the same parameters
        _check_replaceable(root)
        trash = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not move the generated data into {root}: {last}")


def generate(
    root: str | Path,
    train_tracks_per_class: int = 6,
    frames_per_track: int = 5,
    test_per_class: int = 5,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) the synthetic tree under root and return root as an absolute path. overwrite=True
    regenerates a matching tree; a non-empty root that this generator did not make is never replaced."""
    tracks, frames, per_class, seed = (int(v) for v in (train_tracks_per_class, frames_per_track, test_per_class, seed))
    params = {"train_tracks_per_class": tracks, "frames_per_track": frames, "test_per_class": per_class, "seed": seed}
    for key, value in params.items():
        if value < (minimum := 0 if key == "seed" else 1):
            raise ValueError(f"{key}={value} must be {minimum} or more.")
    root = Path(root).expanduser().absolute()
    if not overwrite and _is_complete(root, params):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    prefix = glob.escape(f".{root.name}")  # leftovers of killed runs: replaced old trees, stale temp trees
    for old_tree in root.parent.glob(prefix + ".old-*"):
        shutil.rmtree(old_tree, ignore_errors=True)
    for temp_tree in root.parent.glob(prefix + ".tmp-*"):
        with contextlib.suppress(OSError):  # another run may remove it first
            if time.time() - temp_tree.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(temp_tree, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:  # every track and test image has its own generator, seeded by (seed, split, class, index), so no
        # image depends on how many others were drawn
        train, test = tmp / "GTSRB" / "Final_Training" / "Images", tmp / "GTSRB" / "Final_Test" / "Images"
        n_train = sum(
            _write_split(train / f"{c:05d}", f"GT-{c:05d}.csv", _training_images(seed, c, tracks, frames))
            for c in range(NUM_CLASSES)
        )
        counts = {"train": n_train, "test": _write_split(test, "GT-final_test.csv", _test_images(seed, per_class))}
        os.chmod(tmp, (tmp / "GTSRB").stat().st_mode & 0o777)  # mkdtemp makes 0700; use the umask default
        marker = {"format_version": FORMAT_VERSION, "generator": __package__, "params": params, "counts": counts}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _install(tmp, root, params, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

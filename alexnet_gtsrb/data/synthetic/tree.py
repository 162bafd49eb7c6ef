"""Writing the synthetic tree to disk: images and CSVs in the official layout, the completion marker, installing.

``generate(root)`` writes, with no internet and no real data::

    <root>/GTSRB/Final_Training/Images/000NN/TTTTT_FFFFF.ppm   + GT-000NN.csv   (43 class folders)
    <root>/GTSRB/Final_Test/Images/NNNNN.ppm                   + GT-final_test.csv
    <root>/.synthetic_complete.json                            (parameters; written last)

The tree is built in a temporary sibling folder, the marker written last, and the folder renamed into place
(a directory rename, not a file write), so an interrupted run never leaves a tree that looks complete, and a
tree with the same parameters is reused.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.data.synthetic.render import MAX_SIGN_SIDE, MIN_SIGN_SIDE, render_track
from alexnet_gtsrb.errors import BadFileError
from alexnet_gtsrb.utils.files import cache_root, read_text_file

#: Bump when the drawing or layout changes, so cached trees from older code are regenerated.
FORMAT_VERSION = 1
MARKER_NAME = ".synthetic_complete.json"
CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
#: Temp folders older than this (seconds) are leftovers of killed runs.
STALE_TEMP_SECONDS = 3600
#: The generator named in the marker: the package, whichever of its modules runs.
GENERATOR = __package__


def default_synthetic_root(
    train_tracks_per_class: int = 6, frames_per_track: int = 5, test_per_class: int = 5, seed: int = 0
) -> Path:
    """Where the demo data for these settings is cached: ``<cache root>/synthetic/<settings>``.

    One folder per setting (and format version), so a run generating other settings never replaces the tree
    a running job reads. The cache root is ``$ALEXNET_GTSRB_CACHE`` or ``~/.cache/alexnet_gtsrb``.
    """
    name = f"tracks{int(train_tracks_per_class)}-frames{int(frames_per_track)}-test{int(test_per_class)}"
    return cache_root() / "synthetic" / f"{name}-seed{int(seed)}-v{FORMAT_VERSION}"


# ---------------------------------------------------------------------------------------------------
# Writing the tree
# ---------------------------------------------------------------------------------------------------
def _write_image(path: Path, rgb: np.ndarray) -> None:
    """Binary PPM (P6), 8-bit RGB on disk (cv2 takes BGR)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PXM_BINARY, 1]):
        raise OSError(f"cv2 could not write {path}")


def _write_csv(path: Path, rows: list[tuple]) -> None:
    """Semicolon-separated annotation file in the official GTSRB format."""
    lines = [CSV_HEADER] + [";".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _build(out: Path, params: dict[str, int]) -> dict[str, int]:
    """Write the whole GTSRB/ tree under out; returns image counts.

    Each track and each test image draws from its own generator seeded by (seed, split, class, index), so
    one image does not depend on how many others were drawn before it.
    """
    seed, tracks, frames = params["seed"], params["train_tracks_per_class"], params["frames_per_track"]
    train_dir = out / "GTSRB" / "Final_Training" / "Images"
    n_train = 0
    for class_id in range(NUM_CLASSES):
        class_dir = train_dir / f"{class_id:05d}"
        class_dir.mkdir(parents=True)
        rows = []
        for track in range(tracks):
            rng = np.random.default_rng([seed, 0, class_id, track])
            first_size = rng.uniform(MIN_SIGN_SIDE, 45)
            last_size = min(MAX_SIGN_SIDE, first_size * rng.uniform(1.3, 2.2))
            if frames > 1:
                sizes = list(np.linspace(first_size, last_size, frames))
            else:
                sizes = [rng.uniform(MIN_SIGN_SIDE, MAX_SIGN_SIDE)]
            for frame, (img, roi) in enumerate(render_track(rng, class_id, sizes)):
                name = f"{track:05d}_{frame:05d}.ppm"
                _write_image(class_dir / name, img)
                rows.append((name, img.shape[1], img.shape[0], *roi, class_id))
                n_train += 1
        _write_csv(class_dir / f"GT-{class_id:05d}.csv", rows)
    # Test: every image is an independent sign; classes shuffled, files numbered in order.
    samples = []
    for class_id in range(NUM_CLASSES):
        for k in range(params["test_per_class"]):
            rng = np.random.default_rng([seed, 1, class_id, k])
            samples.append((class_id, *render_track(rng, class_id, [rng.uniform(MIN_SIGN_SIDE, MAX_SIGN_SIDE)])[0]))
    order = np.random.default_rng([seed, 2]).permutation(len(samples))
    test_dir = out / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = []
    for i, j in enumerate(order):
        class_id, img, roi = samples[int(j)]
        name = f"{i:05d}.ppm"
        _write_image(test_dir / name, img)
        rows.append((name, img.shape[1], img.shape[0], *roi, class_id))
    _write_csv(test_dir / "GT-final_test.csv", rows)
    return {"train": n_train, "test": len(rows)}


# ---------------------------------------------------------------------------------------------------
# Caching and atomic installation
# ---------------------------------------------------------------------------------------------------
def read_marker(root: str | Path) -> dict | None:
    """The completion marker's content, or None if absent or unreadable."""
    try:
        data = json.loads(read_text_file(Path(root) / MARKER_NAME, "synthetic tree marker"))
    except (OSError, ValueError, BadFileError):  # a pipe or oversized marker is as good as none
        return None
    return data if isinstance(data, dict) else None


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    """True when root holds a finished tree generated with exactly these parameters by this format."""
    marker = read_marker(root)
    return (
        marker is not None
        and marker.get("format_version") == FORMAT_VERSION
        and marker.get("params") == params
        and (root / "GTSRB").is_dir()
    )


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything that this generator did not make (never delete a user's data)."""
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir() or root.is_symlink():
        raise FileExistsError(f"{root} exists and is not a directory; pick another root for synthetic data.")
    if (root / MARKER_NAME).is_file() or not any(root.iterdir()):
        return
    raise FileExistsError(
        f"{root} is not empty and was not produced by the synthetic generator (no {MARKER_NAME}); "
        "refusing to replace it. Pick another root, or delete the folder yourself."
    )


def _cleanup_stale(root: Path) -> None:
    """Remove leftovers of killed runs next to root: replaced old trees, and temp trees older than an hour."""
    prefix = glob.escape(f".{root.name}")
    for old_tree in root.parent.glob(prefix + ".old-*"):
        shutil.rmtree(old_tree, ignore_errors=True)
    now = time.time()
    for temp_tree in root.parent.glob(prefix + ".tmp-*"):
        try:
            if now - temp_tree.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(temp_tree, ignore_errors=True)
        except OSError:
            pass


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
        try:
            os.replace(root, trash)
        except FileNotFoundError:
            continue
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
    """Write (or reuse) a synthetic GTSRB tree under root and return root; cached by the marker file.

    The tree is built in a temporary sibling folder, the marker written last, and the folder renamed into
    place, so an interrupted run never leaves a tree that looks complete. overwrite=True regenerates even
    when a matching tree exists. A non-empty root that this function did not create is never replaced.
    """
    params = {
        "train_tracks_per_class": int(train_tracks_per_class),
        "frames_per_track": int(frames_per_track),
        "test_per_class": int(test_per_class),
        "seed": int(seed),
    }
    for key, value in params.items():
        if value < (0 if key == "seed" else 1):
            raise ValueError(f"{key}={value} must be {'0' if key == 'seed' else '1'} or more.")
    root = Path(root).expanduser().absolute()
    if not overwrite and _is_complete(root, params):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = _build(tmp, params)
        os.chmod(tmp, (tmp / "GTSRB").stat().st_mode & 0o777)  # mkdtemp makes 0700; use the umask default
        marker = {"format_version": FORMAT_VERSION, "generator": GENERATOR, "params": params, "counts": counts}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _install(tmp, root, params, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root

"""Command line of the generator, and a preview grid with one image per class to eyeball the designs."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.data.synthetic.tree import default_synthetic_root, generate
from alexnet_gtsrb.utils.files import cache_root


def make_preview(root: str | Path, out_png: str | Path, tile: int = 80) -> Path:
    """Save a grid with one training image per class (the last frame of track 0), 9 per row, labelled."""
    images = Path(root) / "GTSRB" / "Final_Training" / "Images"
    grid = np.full((math.ceil(NUM_CLASSES / 9) * (tile + 14), 9 * tile, 3), 255, np.uint8)  # labels under tiles
    for class_id in range(NUM_CLASSES):
        files = sorted((images / f"{class_id:05d}").glob("00000_*.ppm"))
        if not files:
            continue
        if (frame := cv2.imread(str(files[-1]), cv2.IMREAD_COLOR)) is None:
            raise OSError(f"cv2 could not read {files[-1]}")
        y, x = (class_id // 9) * (tile + 14), (class_id % 9) * tile
        thumbnail = cv2.resize(frame, (tile - 4, tile - 4), interpolation=cv2.INTER_NEAREST)
        grid[y + 2 : y + tile - 2, x + 2 : x + tile - 2] = thumbnail
        label_at, font = (x + 4, y + tile + 10), cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(grid, str(class_id), label_at, font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(out_png), grid):
        raise OSError(f"cv2 could not write {out_png}")
    return Path(out_png)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m alexnet_gtsrb.data.synthetic --root DIR [--tracks N --frames N --test N --seed N]."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_gtsrb.data.synthetic",
        description="Generate a small synthetic GTSRB look-alike in the official archive layout (offline demo).",
    )
    add = parser.add_argument
    add("--root", type=Path, help=f"output folder (default: one per setting under {cache_root()}/synthetic)")
    add("--tracks", type=int, default=6, help="training tracks per class (default 6)")
    add("--frames", type=int, default=5, help="frames per training track (default 5)")
    add("--test", type=int, default=5, help="test images per class (default 5)")
    add("--seed", type=int, default=0)
    add("--overwrite", action="store_true", help="regenerate even if a matching tree exists")
    add("--preview", type=Path, help="also save a PNG grid with one image per class")
    args = parser.parse_args(argv)
    settings = (args.tracks, args.frames, args.test, args.seed)
    started = time.perf_counter()
    try:
        root = generate(args.root or default_synthetic_root(*settings), *settings, args.overwrite)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"synthetic GTSRB: {NUM_CLASSES * args.tracks * args.frames} train + {NUM_CLASSES * args.test} test images, "
        f"{NUM_CLASSES} classes, in {root / 'GTSRB'} ({time.perf_counter() - started:.1f} s)"
    )
    if args.preview is not None:
        print(f"preview: {make_preview(root, args.preview)}")
    return 0

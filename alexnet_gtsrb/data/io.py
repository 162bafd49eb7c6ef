"""Reading images: decode a file to uint8 RGB, read its size from the header, crop the annotated sign box.

Used by the dataset (per item), the image cache (once per image), ``predict`` and the index's header scan,
so every path reads and crops an image the same way.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import cv2
import numpy as np

from alexnet_gtsrb.errors import BadDataError

cv2.setNumThreads(0)  # parallelism comes from DataLoader workers; OpenCV threads would oversubscribe


def decode_rgb(path: str) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array; BadDataError naming the file if it can't be read."""
    data = np.fromfile(path, dtype=np.uint8) if _exists(path) else None
    if data is None:
        raise BadDataError(f"{path}: image file is missing (it was indexed, then disappeared).")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise BadDataError(f"{path}: image cannot be decoded (corrupt or not an image). Replace or remove it.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _exists(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


def image_size_from_header(path: str) -> tuple[int, int]:
    """Width and height read from a PPM or PNG header; raises BadDataError if missing or malformed.

    Also checks that a binary PPM holds all its pixel bytes, so a truncated file is caught here.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise BadDataError(f"{path}: listed in the annotations but missing on disk.") from None
    except OSError as e:
        raise BadDataError(f"{path}: cannot be read ({e}).") from None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:2] == b"P6":
        tokens: list[bytes] = []
        pos = 2
        while len(tokens) < 3 and pos < len(head):
            while pos < len(head) and head[pos : pos + 1].isspace():
                pos += 1
            if head[pos : pos + 1] == b"#":
                while pos < len(head) and head[pos : pos + 1] != b"\n":
                    pos += 1
                continue
            start = pos
            while pos < len(head) and not head[pos : pos + 1].isspace():
                pos += 1
            tokens.append(head[start:pos])
        try:
            w, h, maxval = (int(t) for t in tokens)
        except ValueError:
            raise BadDataError(f"{path}: corrupt PPM header. Re-extract the file from its archive.") from None
        need = pos + 1 + w * h * 3 * (2 if maxval > 255 else 1)
        if size < need:
            raise BadDataError(
                f"{path}: truncated image ({size} bytes, its header needs {need}). "
                "Re-extract the file from its archive."
            )
        return w, h
    if head[:3] == b"\xff\xd8\xff":
        return -1, -1  # JPEG: size not parsed cheaply; decode errors surface when loading
    raise BadDataError(f"{path}: not a PPM, PNG or JPEG image (unknown header). Remove or replace it.")


def roi_box(
    roi: Sequence[int], actual: tuple[int, int], declared: tuple[int | None, int | None]
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), exclusive, of an inclusive ROI scaled from the declared to the actual size.

    When the file on disk is a rescaled copy (as in some redistributed subsets), the annotation's box is
    scaled to the real image size; the box is clamped to the image and never empty.
    """
    w, h = actual
    dw, dh = declared
    sx = w / dw if dw else 1.0
    sy = h / dh if dh else 1.0
    x1, y1, x2, y2 = roi
    left, top = int(round(x1 * sx)), int(round(y1 * sy))
    right, bottom = int(round((x2 + 1) * sx)), int(round((y2 + 1) * sy))
    left, top = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    right, bottom = min(max(right, left + 1), w), min(max(bottom, top + 1), h)
    return left, top, right, bottom


def roi_crop(image: np.ndarray, roi: Sequence[int], declared_size: tuple[int | None, int | None]) -> np.ndarray:
    """Crop the annotated sign box (inclusive corners, annotation coordinates) out of an HxWxC image."""
    left, top, right, bottom = roi_box(roi, (image.shape[1], image.shape[0]), declared_size)
    return image[top:bottom, left:right]

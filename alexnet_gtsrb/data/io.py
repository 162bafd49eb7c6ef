"""Reading images: decode a file to uint8 RGB, crop the annotated sign box, hash a file's bytes.

Shared by the dataset, the index's verification, the image cache and ``predict``, so every path reads, refuses and
crops an image the same way. Hostile files are refused by name before they cost memory: a pipe, device or folder,
or a file over :data:`MAX_FILE_BYTES` (type and size from ``fstat`` of the opened file), is never read, and an image
whose header (read lazily by Pillow, any format it knows) declares over :data:`MAX_PIXELS` is never decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

from alexnet_gtsrb.errors import BadDataError
from alexnet_gtsrb.utils.files import open_regular_file

cv2.setNumThreads(0)  # parallelism comes from DataLoader workers; OpenCV threads would oversubscribe
# a file OpenCV cannot decode is named in one line by decode_rgb; OpenCV's own log line would only repeat it
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)

#: 5000 x 5000: generous next to GTSRB's images (at most ~250 x 250) and a cropped sign, far from a
#: decompression bomb (a 25 MP RGB image decodes to 75 MB).
MAX_PIXELS = 25_000_000
#: No image format needs more than 8 bytes a pixel (uncompressed 16-bit RGBA), so a larger file is not an image
#: within :data:`MAX_PIXELS`; it is refused unread instead of being read into memory whole.
MAX_FILE_BYTES = 8 * MAX_PIXELS


def _open(path: str) -> BinaryIO:
    """The open binary file when ``path`` is a regular file within :data:`MAX_FILE_BYTES`; BadDataError naming it."""
    try:
        return open_regular_file(path, "image file", MAX_FILE_BYTES, "Replace or remove it.", BadDataError)[1]
    except FileNotFoundError:
        raise BadDataError(f"{path}: image file is missing (listed, but not on disk).") from None


def _read(path: str) -> bytes:
    """The bytes of a file :func:`_open` accepts, at most :data:`MAX_FILE_BYTES`; BadDataError naming it."""
    with _open(path) as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise BadDataError(f"{path}: image file cannot be read ({e.strerror or e}).") from None
    if len(data) > MAX_FILE_BYTES:  # grew since it was measured
        raise BadDataError(f"{path}: image file is over the limit of {MAX_FILE_BYTES:,} bytes; refused.")
    return data


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of a regular file's bytes, with :func:`decode_rgb`'s refusals. The image cache keys on it:
    ``cp -p``, ``rsync -a`` and unzip keep a file's size and mtime across other content, not its digest."""
    return hashlib.sha256(_read(path)).hexdigest()


def _check_declared_size(source: BinaryIO, path: str) -> None:
    """BadDataError naming ``path`` unless Pillow finds an image header declaring at most :data:`MAX_PIXELS`
    (Pillow reads only the header from ``source``)."""
    fix = "refused before decoding. Replace or remove the file (or scale it down)."
    try:
        with warnings.catch_warnings():  # Pillow warns from ~89 MP; MAX_PIXELS below refuses in one line anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                (width, height), kind = im.size, im.format
    except Image.DecompressionBombError:  # Pillow's own limit (about 179 MP) lies above ours
        raise BadDataError(
            f"{path}: its header declares more pixels than Pillow's decompression-bomb limit, far over the limit "
            f"of {MAX_PIXELS:,}; {fix}"
        ) from None
    except Exception:  # UnidentifiedImageError, or whatever a format plugin raises on a malformed header
        raise BadDataError(
            f"{path}: image cannot be decoded (not an image, or a corrupt header). Replace or remove it."
        ) from None
    if width * height > MAX_PIXELS:
        raise BadDataError(
            f"{path}: its {kind} header declares {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{MAX_PIXELS:,}; {fix}"
        )


def decode_rgb(path: str) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array (OpenCV's decoders); BadDataError naming the file if it
    cannot be read, is over the size limits (checked before decoding) or does not decode."""
    data = _read(path)
    _check_declared_size(io.BytesIO(data), path)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (cv2.error, MemoryError) as e:
        raise BadDataError(f"{path}: image cannot be decoded ({str(e).strip().splitlines()[-1]}).") from None
    if image is None:
        raise BadDataError(f"{path}: image cannot be decoded (corrupt or truncated). Replace or remove it.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_header(path: str) -> None:
    """What :func:`decode_rgb` checks before decoding (the file's kind and size, an image header Pillow knows,
    :data:`MAX_PIXELS`), without reading the pixels; BadDataError naming the file."""
    with _open(path) as f:
        _check_declared_size(f, path)


def roi_box(
    roi: Sequence[int], actual: tuple[int, int], declared: tuple[int | None, int | None]
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), exclusive, of an inclusive ROI scaled from the declared size to the actual one
    (some redistributed subsets hold rescaled copies), clamped to the image and never empty."""
    (w, h), (dw, dh), (x1, y1, x2, y2) = actual, declared, roi
    sx, sy = (w / dw if dw else 1.0), (h / dh if dh else 1.0)
    left, top = int(round(x1 * sx)), int(round(y1 * sy))
    right, bottom = int(round((x2 + 1) * sx)), int(round((y2 + 1) * sy))
    left, top = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    right, bottom = min(max(right, left + 1), w), min(max(bottom, top + 1), h)
    return left, top, right, bottom


def roi_crop(image: np.ndarray, roi: Sequence[int], declared_size: tuple[int | None, int | None]) -> np.ndarray:
    """Crop the annotated sign box (inclusive corners, annotation coordinates) out of an HxWxC image."""
    left, top, right, bottom = roi_box(roi, (image.shape[1], image.shape[0]), declared_size)
    return image[top:bottom, left:right]

"""Reading images: decode a file to uint8 RGB, read its size from the header, crop the annotated sign box.

Used by the dataset (per item), the image cache (once per image), ``predict`` and the index's header scan,
so every path reads and crops an image the same way.

Hostile files are refused by name before they cost memory: a pipe, device or folder, or a file over
``max_file_bytes``, is never read (type and size come from ``fstat`` of the opened file:
:func:`alexnet_gtsrb.utils.files.open_regular_file`), and an image whose header declares more than
``max_pixels`` pixels is never decoded. Headers are parsed here for PPM/PGM/PBM, PNG, JPEG (its SOF marker),
BMP and WebP; other formats OpenCV reads are left to its own limit (``CV_IO_MAX_IMAGE_PIXELS``) and checked
against ``max_pixels`` after decoding.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import cv2
import numpy as np

from alexnet_gtsrb.errors import BadDataError, ConfigError
from alexnet_gtsrb.utils.files import open_regular_file

cv2.setNumThreads(0)  # parallelism comes from DataLoader workers; OpenCV threads would oversubscribe

#: 5000 x 5000: generous next to GTSRB's images (at most ~250 x 250), far from a decompression bomb.
DEFAULT_MAX_PIXELS = 25_000_000
#: 64 MiB: a GTSRB image is a few KB; nothing larger is read into memory.
DEFAULT_MAX_FILE_BYTES = 64 * 1024**2
_PNM_HEADER_BYTES = 4096  # a PNM header (magic, comments, sizes) must end within this many bytes
_HEADER_BYTES = 64 * 1024  # read by the header scan; a JPEG whose frame header lies further is read whole
_JPEG_MAX_SEGMENTS = 10_000  # real JPEGs have a few dozen segments before the frame header
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")  # fill bytes, then the marker code (as libjpeg skips)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DIGEST_CHUNK_BYTES = 1024**2  # read size of file_sha256: whole GTSRB images, bounded memory for others
_LIMIT_KEYS = ("data.max_pixels (predict: max_pixels)", "data.max_file_bytes (predict: max_file_bytes)")


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What an image file's header declares: format, size, and the least file size it needs (0: unknown)."""

    kind: str
    width: int
    height: int
    min_bytes: int = 0


class _Incomplete(Exception):
    """The header was not found in the bytes given; more of the file is needed."""


def check_limits(max_pixels: int | None, max_file_bytes: int | None, keys: Sequence[str] = _LIMIT_KEYS) -> None:
    """ConfigError naming the key unless each cap is a positive integer or None (no cap of ours)."""
    for key, value in zip(keys, (max_pixels, max_file_bytes), strict=True):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key.split(' ')[0]}={value!r} must be a positive integer (or null for no limit).")


def _corrupt(name: str, kind: str, why: str) -> BadDataError:
    return BadDataError(f"{name}: corrupt {kind} header ({why}). Re-extract the file from its archive or remove it.")


def _pnm(data: bytes, name: str) -> ImageHeader:
    """P1-P6: whitespace-separated width, height (and maxval except for bitmaps), comments allowed."""
    magic = data[1] - ord("0")
    head = data[:_PNM_HEADER_BYTES]
    wanted = 2 if magic in (1, 4) else 3
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < wanted:
        while pos < len(head) and (head[pos : pos + 1].isspace() or head[pos] == ord("#")):
            if head[pos] == ord("#"):
                end = head.find(b"\n", pos)
                pos = len(head) if end < 0 else end
            pos += 1
        start = pos
        while pos < len(head) and not head[pos : pos + 1].isspace() and head[pos] != ord("#"):
            pos += 1
        if pos >= len(head):  # the last token must be followed by whitespace, within the first 4 KiB
            raise _corrupt(name, "PNM", "it ends before width, height and maxval are complete")
        tokens.append(head[start:pos])
    if not all(t.isdigit() and len(t) <= 10 for t in tokens):
        raise _corrupt(name, "PNM", f"width/height/maxval {b' '.join(tokens)[:40]!r} are not plain numbers")
    width, height = int(tokens[0]), int(tokens[1])
    maxval = int(tokens[2]) if wanted == 3 else 1
    if width < 1 or height < 1 or not 1 <= maxval <= 65535:
        raise _corrupt(name, "PNM", f"size {width}x{height}, maxval {maxval}")
    sample = 2 if maxval > 255 else 1
    pixels = {4: (width + 7) // 8 * height, 5: width * height * sample, 6: width * height * 3 * sample}
    need = pos + 1 + pixels[magic] if magic in pixels else 0  # P1-P3 are text: no size to check
    return ImageHeader("PNM", width, height, need)


def _png(data: bytes, name: str) -> ImageHeader:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise _corrupt(name, "PNG", "no IHDR chunk after the signature")
    width, height = struct.unpack(">II", data[16:24])
    if not (1 <= width < 2**31 and 1 <= height < 2**31):
        raise _corrupt(name, "PNG", f"size {width}x{height}")
    return ImageHeader("PNG", width, height)


def _jpeg(data: bytes, name: str, complete: bool) -> ImageHeader:
    """Walk the marker segments up to the first start-of-frame (SOFn) and read its size."""
    pos = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        m = _JPEG_MARKER.search(data, pos)
        if m is None or m.end() + 2 > len(data):
            break
        code, pos = m.group(1)[0], m.end()
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # standalone markers: no length
            continue
        if code in (0xD9, 0xDA):
            raise _corrupt(name, "JPEG", "no frame header before the image data")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise _corrupt(name, "JPEG", f"segment length {length} at byte offset {pos}")
        if code in _JPEG_SOF:
            if length < 8:
                raise _corrupt(name, "JPEG", f"frame header of {length} bytes at byte offset {pos}")
            if pos + 7 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            if width < 1 or height < 1:
                raise _corrupt(name, "JPEG", f"size {width}x{height}")
            return ImageHeader("JPEG", width, height)
        pos += length
    else:
        raise _corrupt(name, "JPEG", f"no frame header within the first {_JPEG_MAX_SEGMENTS} segments")
    if not complete:
        raise _Incomplete
    raise _corrupt(name, "JPEG", "the file ends before its frame header")


def _bmp(data: bytes, name: str) -> ImageHeader:
    if len(data) < 26:
        raise _corrupt(name, "BMP", "shorter than its headers")
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)  # negative: rows stored top-down
    if width < 1 or height < 1:
        raise _corrupt(name, "BMP", f"size {width}x{height}")
    return ImageHeader("BMP", width, height)


def _webp(data: bytes, name: str) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    else:
        raise _corrupt(name, "WebP", f"unknown or short {chunk!r} chunk")
    if width < 1 or height < 1:
        raise _corrupt(name, "WebP", f"size {width}x{height}")
    return ImageHeader("WebP", width, height)


def image_header(data: bytes, name: str, complete: bool = True) -> ImageHeader | None:
    """The header of an image file from its first bytes (``complete``: ``data`` is the whole file).

    None for a format not parsed here; BadDataError naming ``name`` for a malformed header of a known one.
    Never decodes pixels, so it costs nothing whatever size the header declares.
    """
    if data.startswith(_PNG_MAGIC):
        return _png(data, name)
    if len(data) >= 2 and data[0] == ord("P") and data[1] in b"123456":
        return _pnm(data, name)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data, name, complete)
    if data.startswith(b"BM"):
        return _bmp(data, name)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, name)
    return None


def _too_many_pixels(name: str, width: int, height: int, kind: str | None, max_pixels: int) -> BadDataError:
    """The pixel-cap refusal; ``kind`` names the header it was read from (None: known only after decoding)."""
    said = f"its {kind} header declares" if kind else "it decodes to"
    when = "refused before decoding" if kind else "refused"
    return BadDataError(
        f"{name}: {said} {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
        f"{when}. Replace or remove the file, or raise {_LIMIT_KEYS[0]} if it is a genuine image."
    )


def _open_regular(path: str, max_file_bytes: int | None) -> tuple[int, BinaryIO]:
    """(size, open binary file) of a regular file within the size cap; BadDataError naming it otherwise."""
    try:
        return open_regular_file(
            path,
            "image file",
            max_file_bytes,
            f"Replace or remove it (or raise {_LIMIT_KEYS[1]} for a genuine image over the limit).",
            BadDataError,
        )
    except FileNotFoundError:
        raise BadDataError(f"{path}: image file is missing (listed, but not on disk).") from None


def _read_capped(f: BinaryIO, name: str, max_file_bytes: int | None) -> bytes:
    data = f.read() if max_file_bytes is None else f.read(max_file_bytes + 1)
    if max_file_bytes is not None and len(data) > max_file_bytes:  # grew since it was measured
        raise BadDataError(f"{name}: file is over the limit of {max_file_bytes:,} bytes; refused.")
    return data


def file_sha256(path: str, max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> str:
    """SHA-256 (hex) of a regular file's bytes, read in chunks; the same refusals as :func:`decode_rgb`.

    The image cache keys on it: ``cp -p``, ``rsync -a`` and unzip keep a file's size and mtime across
    other content, but not its digest.
    """
    _, f = _open_regular(path, max_file_bytes)
    h = hashlib.sha256()
    try:
        while chunk := f.read(_DIGEST_CHUNK_BYTES):
            h.update(chunk)
    except OSError as e:
        raise BadDataError(f"{path}: image file cannot be read ({e.strerror or e}).") from None
    finally:
        f.close()
    return h.hexdigest()


def decode_rgb(
    path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES
) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array; BadDataError naming the file if it can't be read.

    A file over ``max_file_bytes`` is refused before it is read, an image declaring more than ``max_pixels``
    pixels before it is decoded (None: no cap of ours; OpenCV keeps its own limit).
    """
    _, f = _open_regular(path, max_file_bytes)
    try:
        data = _read_capped(f, path, max_file_bytes)
    except OSError as e:
        raise BadDataError(f"{path}: image file cannot be read ({e.strerror or e}).") from None
    finally:
        f.close()
    header = image_header(data, path)
    if header is not None:
        if max_pixels is not None and header.width * header.height > max_pixels:
            raise _too_many_pixels(path, header.width, header.height, header.kind, max_pixels)
        if len(data) < header.min_bytes:
            raise BadDataError(
                f"{path}: truncated image ({len(data)} bytes, its header needs {header.min_bytes}). "
                "Re-extract the file from its archive."
            )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except (cv2.error, MemoryError) as e:
        raise BadDataError(f"{path}: image cannot be decoded ({str(e).strip().splitlines()[-1]}).") from None
    if image is None:
        raise BadDataError(f"{path}: image cannot be decoded (corrupt or not an image). Replace or remove it.")
    height, width = image.shape[:2]
    if max_pixels is not None and width * height > max_pixels:  # a format whose header is not parsed here
        raise _too_many_pixels(path, width, height, None, max_pixels)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size_from_header(
    path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES
) -> tuple[int, int]:
    """Width and height from a PNM, PNG, JPEG, BMP or WebP header; BadDataError if missing or malformed.

    Also checks that a binary PNM holds all its pixel bytes (a truncated file is caught here) and applies
    the same caps as :func:`decode_rgb`. Reads the first 64 KiB (more only for a JPEG with large metadata).
    """
    size, f = _open_regular(path, max_file_bytes)
    try:
        data = f.read(_HEADER_BYTES)
        try:
            header = image_header(data, path, complete=len(data) >= size)
        except _Incomplete:
            f.seek(0)
            header = image_header(_read_capped(f, path, max_file_bytes), path)
    except OSError as e:
        raise BadDataError(f"{path}: cannot be read ({e.strerror or e}).") from None
    finally:
        f.close()
    if header is None:
        raise BadDataError(f"{path}: not a PPM, PNG, JPEG, BMP or WebP image (unknown header). Remove or replace it.")
    if max_pixels is not None and header.width * header.height > max_pixels:
        raise _too_many_pixels(path, header.width, header.height, header.kind, max_pixels)
    if size < header.min_bytes:
        raise BadDataError(
            f"{path}: truncated image ({size} bytes, its header needs {header.min_bytes}). "
            "Re-extract the file from its archive."
        )
    return header.width, header.height


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

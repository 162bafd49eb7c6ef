"""Command line: ``python -m alexnet_gtsrb.data.download --root DIR [--only {all,test}] ...``.

Downloads, verifies and unpacks GTSRB into --root, then prints the ``export GTSRB_ROOT=...`` line.
Any failure prints one ``error: ...`` line on stderr and exits 1 (130 on Ctrl-C, 2 for a usage error).
``main`` is also the ``alexnet-gtsrb-download`` console script (``alexnet_gtsrb.data.download.__main__:main``).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from alexnet_gtsrb.data.download import (
    DEFAULT_BASE_URL,
    DEFAULT_DEADLINE,
    MIRROR_ENV_VAR,
    OFFICIAL_ARCHIVES,
    PARTS,
    ROOT_ENV_VAR,
    Archive,
    DownloadError,
    download_gtsrb,
)
from alexnet_gtsrb.data.download.archive import (
    DEFAULT_MAX_DOWNLOAD,
    DEFAULT_MAX_UNPACKED,
    MAX_RATIO,
    MD5_RE,
    RATIO_FLOOR,
    SIZE_MARGIN,
)

#: --only choices and the parts of the dataset each one fetches.
ONLY_CHOICES: dict[str, tuple[str, ...]] = {"all": PARTS, "test": ("test",)}


def _split_override(flag: str, item: str, names: Sequence[str], what: str) -> tuple[str, str]:
    """Split a FILENAME=VALUE override of `flag`, checking that FILENAME names an archive."""
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or name not in names:
        raise ValueError(f"{flag} expects FILENAME={what} with FILENAME one of {', '.join(names)}; got {item!r}")
    return name, value


def _md5_value(name: str, value: str) -> str | None:
    if value.lower() == "none":
        return None
    if MD5_RE.fullmatch(value):
        return value.lower()
    raise ValueError(f"--md5 {name}: HASH must be 32 hex digits or 'none', got {value!r}")


def _size_value(name: str, value: str) -> int | None:
    if value.lower() == "none":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(f"--size {name}: BYTES must be a positive whole number or 'none', got {value!r}")


#: --md5 FILENAME=HASH and --size FILENAME=BYTES: (what the value is called, the Archive field, its parser)
_OVERRIDES = {"--md5": ("HASH", "md5", _md5_value), "--size": ("BYTES", "size", _size_value)}


def _apply_overrides(archives: Sequence[Archive], flag: str, overrides: Sequence[str]) -> tuple[Archive, ...]:
    """Apply FILENAME=VALUE overrides of ``flag`` ('none': no check / unknown) to a set of archives."""
    what, field, parse = _OVERRIDES[flag]
    by_name = {a.filename: a for a in archives}
    for item in overrides:
        name, value = _split_override(flag, item, tuple(by_name), what)
        changes: dict[str, Any] = {field: parse(name, value)}
        by_name[name] = replace(by_name[name], **changes)
    return tuple(by_name[a.filename] for a in archives)


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """argparse type: a positive int or float."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _one_line(exc: BaseException) -> str:
    """Collapse an exception message onto a single line for the CLI."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    """The argument parser (defaults for --root come from $GTSRB_ROOT)."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_gtsrb.data.download",
        description="Download, verify and unpack the official GTSRB archives (resumable, idempotent).",
    )
    parser.add_argument(
        "--root", default=os.environ.get(ROOT_ENV_VAR) or None, help=f"data root to fill (default: ${ROOT_ENV_VAR})"
    )
    parser.add_argument(
        "--only",
        choices=tuple(ONLY_CHOICES),
        default="all",
        help="what to fetch: all (training + test archives, default) or test (only the test images and "
        "GT-final_test.csv, enough to evaluate a checkpoint; skips the 263 MB training archive)",
    )
    parser.add_argument(
        "--mirror",
        default=None,
        help=f"base URL holding the zip files (default: ${MIRROR_ENV_VAR}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or status lines")
    parser.add_argument(
        "--md5",
        action="append",
        default=[],
        metavar="FILENAME=HASH",
        help="override an archive's expected md5 (repeatable; HASH 'none' skips the check). A mirror that "
        "repackages the archives needs --size too",
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="FILENAME=BYTES",
        help=f"override an archive's expected size (repeatable): a download is stopped and deleted once it passes "
        f"{SIZE_MARGIN:g}x this size; BYTES 'none' caps it at {DEFAULT_MAX_DOWNLOAD // 2**30} GiB instead",
    )
    parser.add_argument(
        "--timeout", type=_positive(float), default=60.0, help="network timeout in seconds, per read (default 60)"
    )
    parser.add_argument(
        "--deadline",
        type=_positive(float),
        default=DEFAULT_DEADLINE,
        help=f"overall time limit per archive download, in seconds (default {DEFAULT_DEADLINE:g} = "
        f"{DEFAULT_DEADLINE / 3600:g} h); past it the download stops, keeping its partial file for a rerun to resume",
    )
    parser.add_argument(
        "--max-unpacked",
        type=_positive(int),
        default=None,
        metavar="BYTES",
        help=f"refuse an archive whose members declare more than BYTES uncompressed (zip-bomb guard; default: "
        f"{MAX_RATIO}x the archive's size, at least {RATIO_FLOOR // 2**20} MiB, at most "
        f"{DEFAULT_MAX_UNPACKED // 2**30} GiB)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: download GTSRB into --root and print the GTSRB_ROOT export line."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.root:
        parser.error(f"--root is required (or set ${ROOT_ENV_VAR})")
    try:
        archives = _apply_overrides(_apply_overrides(OFFICIAL_ARCHIVES, "--md5", args.md5), "--size", args.size)
    except ValueError as exc:
        parser.error(str(exc))

    try:
        root = download_gtsrb(
            args.root,
            base_url=args.mirror,
            archives=archives,
            progress=not args.no_progress,
            timeout=args.timeout,
            parts=ONLY_CHOICES[args.only],
            deadline=args.deadline,
            max_unpacked=None if args.max_unpacked is None else int(args.max_unpacked),
        )
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (DownloadError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    what = "GTSRB" if args.only == "all" else "The GTSRB test set"
    print(f"{what} is ready in {root / 'GTSRB'}")
    print("Point the training code at it with:")
    print(f"export {ROOT_ENV_VAR}={shlex.quote(str(root))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m alexnet_gtsrb.data.download --root DIR [--only {all,test}] [--mirror URL] [--md5 FILE=HASH] ...``,
also the ``alexnet-gtsrb-download`` console script: fills --root, then prints the ``export GTSRB_ROOT=...`` line.
A failure is one ``error: ...`` line on stderr and exit 1 (130 on Ctrl-C, 2 for a usage error)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Sequence

from alexnet_gtsrb.data import download as dl

#: --only choices and the parts of the dataset each one fetches.
ONLY_CHOICES: dict[str, tuple[str, ...]] = {"all": dl.PARTS, "test": ("test",)}


def _md5(item: str) -> tuple[str, str]:
    """One --md5 FILENAME=HASH, checked (a bad one is a usage error naming --md5)."""
    name, _, md5 = (s.strip() for s in item.partition("="))
    names = [a.filename for a in dl.OFFICIAL_ARCHIVES]
    if name not in names or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise argparse.ArgumentTypeError(
            f"FILENAME=HASH (32 hex digits), FILENAME one of {', '.join(names)}; got {item!r}"
        )
    return name, md5.lower()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: download GTSRB into --root and print the GTSRB_ROOT export line."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_gtsrb.data.download",
        description="Download, md5-check and unpack the official GTSRB archives (idempotent; retries network errors).",
    )
    add = parser.add_argument
    only_help = "all (training + test archives, default) or test (the test images and GT-final_test.csv: enough to "
    only_help += "evaluate a checkpoint, without the 263 MB training archive)"
    mirror_help = f"http(s) base URL holding the zips (default: ${dl.MIRROR_ENV_VAR}, else {dl.DEFAULT_BASE_URL}); "
    mirror_help += "they must match the official md5s, or those given with --md5"
    md5_help = "a mirror's own md5 of an archive (repeatable)"
    add("--root", default=os.environ.get(dl.ROOT_ENV_VAR) or None, help=f"data root (default: ${dl.ROOT_ENV_VAR})")
    add("--only", choices=tuple(ONLY_CHOICES), default="all", help=only_help)
    add("--mirror", help=mirror_help)
    add("--md5", action="append", default=[], type=_md5, metavar="FILENAME=HASH", help=md5_help)
    add("--no-progress", action="store_true", help="no progress bars or status lines")
    add("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    args = parser.parse_args(argv)
    if not args.root:
        parser.error(f"--root is required (or set ${dl.ROOT_ENV_VAR})")
    if not 0 < args.timeout < float("inf"):
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    md5s = dict(args.md5)
    archives = tuple(dataclasses.replace(a, md5=md5s.get(a.filename, a.md5)) for a in dl.OFFICIAL_ARCHIVES)
    try:
        parts, progress = ONLY_CHOICES[args.only], not args.no_progress
        root = dl.download_gtsrb(args.root, args.mirror, archives, progress, args.timeout, parts)
    except KeyboardInterrupt:
        print("error: interrupted; nothing unverified was kept, rerun the same command", file=sys.stderr)
        return 130
    except (dl.DownloadError, OSError) as exc:
        print("error: " + (" ".join(str(exc).split()) or type(exc).__name__), file=sys.stderr)
        return 1
    what = "GTSRB" if args.only == "all" else "The GTSRB test set"
    print(f"{what} is ready in {root / 'GTSRB'}\nPoint the training code at it with:")
    print(f"export {dl.ROOT_ENV_VAR}={shlex.quote(str(root))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

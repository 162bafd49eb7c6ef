"""Offline demo data: procedurally drawn traffic signs in the official GTSRB archive layout, same bytes per seed.
A training track is one physical sign seen in frames of growing size, near-duplicates as in the real data, so the
track-aware split matters."""

from alexnet_gtsrb.data.synthetic.cli import main, make_preview
from alexnet_gtsrb.data.synthetic.tree import CSV_HEADER, FORMAT_VERSION, MARKER_NAME, default_synthetic_root, generate

__all__ = ["CSV_HEADER", "FORMAT_VERSION", "MARKER_NAME", "default_synthetic_root", "generate", "main", "make_preview"]

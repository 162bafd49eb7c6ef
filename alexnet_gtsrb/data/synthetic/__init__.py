"""Offline demo data: procedurally drawn traffic signs in the official GTSRB archive layout, same bytes per seed.

Each of the 43 classes is a sign design modelled loosely on the real class with the same id (:mod:`.designs`).
A training track is one physical sign (paint, fading, lighting, scene, viewing angle) seen in frames of growing
size, near-duplicates as in the real data, so the track-aware split matters (:mod:`.render`). :mod:`.tree` writes
and installs the tree (``generate``); :mod:`.cli` is ``python -m alexnet_gtsrb.data.synthetic`` and the preview.
"""

from alexnet_gtsrb.data.synthetic.cli import main, make_preview
from alexnet_gtsrb.data.synthetic.tree import CSV_HEADER, FORMAT_VERSION, MARKER_NAME, default_synthetic_root, generate

__all__ = ["CSV_HEADER", "FORMAT_VERSION", "MARKER_NAME", "default_synthetic_root", "generate", "main", "make_preview"]

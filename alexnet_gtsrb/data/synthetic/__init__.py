"""Offline demo data: procedurally drawn traffic signs written in the official GTSRB archive layout.

``generate(root)`` writes, with no internet and no real data, the training tree (43 class folders of
``TTTTT_FFFFF.ppm`` images plus ``GT-000NN.csv``), the test tree (``NNNNN.ppm`` plus ``GT-final_test.csv``)
and, last, a completion marker with the parameters; ``python -m alexnet_gtsrb.data.synthetic`` does the
same from the command line.

Each of the 43 classes is a distinct sign design modelled loosely on the real GTSRB class with the same id
(shape, rim colour, fill colour, glyph). A training *track* is one physical sign (fixed colours, fading,
shading, background, viewing angle) seen in several frames of growing size, so frames of one track are
near-duplicates, as in the real data; this makes track-aware train/val splitting matter. Every test image
is its own independent sign. Output is deterministic for a given seed (same bytes).

Modules, in the order the data flows:

- :mod:`.canvas`: drawing primitives (the sign template with its mask, a glyph pen in local units);
- :mod:`.designs`: what each class looks like (glyphs, sign bodies, the design table by class id);
- :mod:`.render`: one track's paint, lighting and scene, and its frames as a camera sees them;
- :mod:`.tree`: writing images and CSVs, the completion marker, installing the finished tree, ``generate``;
- :mod:`.cli`: the command line and the preview grid.
"""

from __future__ import annotations

from alexnet_gtsrb.data.synthetic.cli import main, make_preview
from alexnet_gtsrb.data.synthetic.tree import (
    CSV_HEADER,
    FORMAT_VERSION,
    MARKER_NAME,
    default_synthetic_root,
    generate,
)

__all__ = ["CSV_HEADER", "FORMAT_VERSION", "MARKER_NAME", "default_synthetic_root", "generate", "main", "make_preview"]

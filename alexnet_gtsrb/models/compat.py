"""Checkpoints of earlier network layouts, named in one line instead of a list of mismatched tensors.

Two layouts were changed to match their sources, and no published result depends on a checkpoint of either,
so neither is converted (a conversion is code to keep and test for no result):

``paper`` classifier order. Dropout once sat on the *inputs* of FC6 and FC7 (torchvision's order:
Dropout, FC6, ReLU, [BN], Dropout, FC7, ReLU, [BN], FC8); the paper and Caffe's ``bvlc_alexnet`` put it on
their outputs, as the variant does now (FC6 at ``classifier.0``). Recognised by FC6's weight at
``classifier.1`` with nothing at ``classifier.0``.

``seed`` conv dropouts. The ``seed`` variant once lacked the origin script's Dropout after conv3 and conv4,
so conv4 sat at ``features.13`` where today's seed network has conv3's Dropout slot (no tensors) and the
paper network a ReLU. Recognised by a 4-D weight there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def old_layout_problem(state_dict: Mapping[str, Any], prefix: str = "net.") -> str | None:
    """One line naming an earlier ``paper`` or ``seed`` layout in ``state_dict``, or None for any other."""
    fc6_old, fc6_new = f"{prefix}classifier.1.weight", f"{prefix}classifier.0.weight"
    if getattr(state_dict.get(fc6_old), "ndim", 0) == 2 and fc6_new not in state_dict:
        return (
            "a paper-layout network with dropout before FC6/FC7 (FC6 at classifier.1), an earlier layout this "
            "version does not load; train it again"
        )
    if getattr(state_dict.get(f"{prefix}features.13.weight"), "ndim", 0) == 4:
        return (
            "a seed network without Dropout after conv3 and conv4 (conv4 at features.13); the origin script has a "
            "Dropout after every conv block and this version cannot load the older layout: train it again with "
            "model=alexnet_seed"
        )
    return None

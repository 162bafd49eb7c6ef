"""Checkpoints of earlier layouts, read into today's networks.

Before issue 14 the ``paper`` variant (and ``alexnet_bn``, the paper layout with BatchNorm, used by
``experiment=cpu_fast``) put dropout on the *inputs* of FC6 and FC7 (torchvision's order):
``classifier`` = Dropout, FC6, ReLU, [BN], Dropout, FC7, ReLU, [BN], FC8. Now dropout follows FC6 and FC7
(the paper's and Caffe's order): FC6, ReLU, [BN], Dropout, FC7, ReLU, [BN], Dropout, FC8. Only the indices of
FC6, FC7 and their BatchNorms move (1 -> 0, 3 -> 2, 5 -> 4, 7 -> 6); FC8 stays at 8. At inference, where
dropout is the identity, the old and the new network compute the same function, so an old checkpoint is
upgraded by renaming its tensors (training resumed from one would drop different units than it was trained with,
so a resume is not upgraded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OLD_TO_NEW_PAPER_CLASSIFIER = {1: 0, 3: 2, 5: 4, 7: 6}


def upgrade_paper_classifier(state_dict: Mapping[str, Any], prefix: str = "net.") -> tuple[dict[str, Any], bool]:
    """(state_dict with a pre-issue-14 paper classifier renamed to today's indices, whether it was renamed).

    Recognised by FC6 at ``classifier.1`` with no ``classifier.0`` weight; anything else is returned as is.
    """
    old_fc6, new_fc6 = f"{prefix}classifier.1.weight", f"{prefix}classifier.0.weight"
    if old_fc6 not in state_dict or new_fc6 in state_dict:
        return dict(state_dict), False
    head = f"{prefix}classifier."
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(head):
            index, _, rest = key[len(head) :].partition(".")
            if index.isdigit() and int(index) in OLD_TO_NEW_PAPER_CLASSIFIER:
                key = f"{head}{OLD_TO_NEW_PAPER_CLASSIFIER[int(index)]}.{rest}"
        out[key] = value
    return out, True

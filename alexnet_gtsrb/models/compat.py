"""Checkpoints of earlier layouts: read into today's networks where the function is unchanged, refused by
name where it is not.

``paper`` classifier order. The ``paper`` variant (and ``alexnet_bn``, the paper layout with BatchNorm, used
by ``experiment=cpu_fast``) once put dropout on the *inputs* of FC6 and FC7 (torchvision's order):
``classifier`` = Dropout, FC6, ReLU, [BN], Dropout, FC7, ReLU, [BN], FC8. Now dropout follows FC6 and FC7
(the paper's and Caffe's order): FC6, ReLU, [BN], Dropout, FC7, ReLU, [BN], Dropout, FC8. Only the indices of
FC6, FC7 and their BatchNorms move (1 -> 0, 3 -> 2, 5 -> 4, 7 -> 6); FC8 stays at 8. At inference, where
dropout is the identity, the old and the new network compute the same function, so an old checkpoint is
upgraded by renaming its tensors (training resumed from one would drop different units than it was trained with,
so a resume is not upgraded).

``seed`` conv dropouts. The ``seed`` variant once lacked the origin script's Dropout after conv3 and conv4,
so conv4, conv5 and their BatchNorms sat at ``features.13/15/16/18`` instead of ``14/16/18/20``. No result was
published from such a checkpoint and the network it describes is not the origin script's, so it is not
upgraded: :func:`seed_layout_problem` names it in one line for the loaders to raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OLD_TO_NEW_PAPER_CLASSIFIER = {1: 0, 3: 2, 5: 4, 7: 6}


def upgrade_paper_classifier(state_dict: Mapping[str, Any], prefix: str = "net.") -> tuple[dict[str, Any], bool]:
    """(state_dict with the paper classifier's older dropout-first order renamed to today's indices, whether it
    was renamed).

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


def seed_layout_problem(state_dict: Mapping[str, Any], prefix: str = "net.") -> str | None:
    """One line describing a ``seed`` state_dict without the conv3/conv4 dropouts, or None for any other.

    Recognised by a convolution weight (4-D) at ``features.13``: conv4 there, where today's seed network has
    conv3's Dropout slot (no tensors) and the paper network a ReLU.
    """
    weight = state_dict.get(f"{prefix}features.13.weight")
    if weight is None or getattr(weight, "ndim", 0) != 4:
        return None
    return (
        "a seed network without Dropout after conv3 and conv4 (conv4 at features.13); the origin script has a "
        "Dropout after every conv block and this version cannot load the older layout: train it again with "
        "model=alexnet_seed"
    )

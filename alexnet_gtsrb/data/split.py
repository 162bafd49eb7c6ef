"""Train/validation splits of the GTSRB training records.

GTSRB training images come in tracks: up to 30 frames of one physical sign. Frames of a track are
near-duplicates, so a random image-level split puts copies of validation images into training and
inflates validation accuracy. ``track_split`` keeps whole tracks on one side, stratified by class.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from alexnet_gtsrb.data.gtsrb import Record
from alexnet_gtsrb.errors import BadDataError, ConfigError

SPLITS = ("track", "random")


def track_split(
    records: Sequence[Record], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Split whole tracks, per class, so that about ``val_fraction`` of each class's images validate.

    Every class with at least two tracks lands on both sides; no track is on both sides.
    """
    tracks: dict[int, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(records):
        # Images without a parseable track name become singleton tracks (never merged with others).
        tracks[r.label][r.track if r.track is not None else f"__image_{i}"].append(r)
    rng, train, val = random.Random(seed), list[Record](), list[Record]()
    for label in sorted(tracks):
        by_track = tracks[label]
        names = sorted(by_track)
        if len(names) < 2:
            raise BadDataError(
                f"class {label} has a single track ({names[0]}), so it cannot appear in both the training "
                "and the validation split. Add data for it or use data.split=random."
            )
        rng.shuffle(names)
        total = sum(len(by_track[n]) for n in names)
        target = val_fraction * total
        chosen, count = list[str](), 0
        # Take tracks until the next one would overshoot the target more than stopping short does.
        for n in names[:-1]:  # leave at least one track for training
            size = len(by_track[n])
            if chosen and abs(count + size - target) > abs(count - target):
                break
            chosen.append(n)
            count += size
        chosen_set = set(chosen)
        for n in sorted(by_track):
            (val if n in chosen_set else train).extend(by_track[n])
    return train, val


def random_split(
    records: Sequence[Record], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Image-level stratified split, as in the origin script. Leaks tracks: use only to measure leakage."""
    by_class: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    rng, train, val = random.Random(seed), list[Record](), list[Record]()
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(val_fraction * len(items))))
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def split_records(
    records: Sequence[Record], how: str = "track", val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Dispatch on ``data.split``; ``val_fraction`` must lie strictly between 0 and 1."""
    if how not in SPLITS:
        raise ConfigError(f"data.split={how!r} is not a known split; allowed: {', '.join(SPLITS)}.")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1 (e.g. 0.2).")
    return (track_split if how == "track" else random_split)(records, val_fraction, seed)

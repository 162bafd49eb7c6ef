"""The 43 GTSRB class names in English, indexed by ClassId; every report uses these."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 t",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 t prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing for vehicles over 3.5 t",
)

NUM_CLASSES = len(CLASS_NAMES)

#: Classes whose sign looks the same after a horizontal flip.
FLIP_INVARIANT: frozenset[int] = frozenset({11, 12, 13, 15, 17, 18, 22, 26, 30, 35})

#: Mirror pairs: a horizontal flip turns one sign into the other (left <-> right).
MIRROR_PAIRS: tuple[tuple[int, int], ...] = ((19, 20), (33, 34), (36, 37), (38, 39))


def class_name(class_id: int) -> str:
    """English name of a class id, or a placeholder for ids outside the 43 official classes."""
    return CLASS_NAMES[class_id] if 0 <= class_id < NUM_CLASSES else f"class {class_id}"

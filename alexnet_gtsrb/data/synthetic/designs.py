"""What each of the 43 signs looks like (modelled loosely on the real class with the same id), as data: a body
style (shape, rim, fill) and a glyph, both lists of drawing ops run by a :class:`Pen`. Colours are roles looked up
in one physical sign's palette, so one design serves every track of a class; coordinates are normalised (the
template spans [0, 1], y down), so the designs do not depend on the template's pixel size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from alexnet_gtsrb.data.classes import NUM_CLASSES

TEMPLATE_SIDE = 160  # px, the per-track sign template (drawn once, then shrunk per frame)
SHIFT = 4  # cv2 takes sub-pixel coordinates as fixed-point numbers with this many fraction bits
FIXED = 1 << SHIFT
Color = tuple[int, int, int]
Point = tuple[float, float]
Op = tuple[Any, ...]  # one drawing op: (Pen method name, colour role, *arguments)


@dataclass
class Pen:
    """Draws ops onto a square image in local units, ``centre + unit * (x, y)`` of the [0, 1] canvas, x optionally
    mirrored (a left-facing design reuses the right-facing drawing). The default units are the canvas's."""

    target: np.ndarray
    palette: dict[str, Any]
    centre: Point = (0.0, 0.0)
    unit: float = 1.0
    mirror: bool = False

    def draw(self, ops: Sequence[Op]) -> None:
        for name, role, *args in ops:
            getattr(self, name)(role, *args)

    def _px(self, point: Point) -> tuple[int, int]:
        """Local point to cv2's fixed-point pixel coordinates."""
        x, size = -point[0] if self.mirror else point[0], self.target.shape[0]
        x, y = self.centre[0] + x * self.unit, self.centre[1] + point[1] * self.unit
        return round(x * size * FIXED), round(y * size * FIXED)

    def _pts(self, points: Sequence[Point]) -> list[np.ndarray]:
        return [np.array([self._px(p) for p in points], np.int32).reshape(-1, 1, 2)]

    def _stroke(self, width: float) -> int:
        return max(1, round(width * self.unit * self.target.shape[0]))

    def poly(self, role: str, points: Sequence[Point]) -> None:
        cv2.fillPoly(self.target, self._pts(points), self.palette[role], cv2.LINE_AA, SHIFT)

    def rect(self, role: str, x0: float, y0: float, x1: float, y1: float) -> None:
        self.poly(role, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def line(self, role: str, points: Sequence[Point], width: float) -> None:
        cv2.polylines(
            self.target, self._pts(points), False, self.palette[role], self._stroke(width), cv2.LINE_AA, SHIFT
        )

    def circle(self, role: str, centre: Point, radius: float, width: float | None = None) -> None:
        """Filled disc, or a ring of the given width."""
        thickness = -1 if width is None else self._stroke(width)
        radius_px = round(radius * self.unit * self.target.shape[0] * FIXED)
        cv2.circle(self.target, self._px(centre), radius_px, self.palette[role], thickness, cv2.LINE_AA, SHIFT)

    def text(self, role: str, text: str, width: float, height: float) -> None:
        """Text centred on the local origin, scaled to fit a width x height box."""
        font, size = cv2.FONT_HERSHEY_DUPLEX, self.target.shape[0]
        (text_w, text_h), _ = cv2.getTextSize(text, font, 1.0, 2)
        scale = min(width * self.unit * size / text_w, height * self.unit * size / text_h)
        thickness = max(2, round(scale * 2.4))
        (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
        origin = (round(self.centre[0] * size - text_w / 2), round(self.centre[1] * size + text_h / 2))
        cv2.putText(self.target, text, origin, font, scale, self.palette[role], thickness, cv2.LINE_AA)

    def arrow(self, role: str, points: Sequence[Point], width: float, head: float) -> None:
        """Stroke through points ending in a filled triangular head of length ``head`` at the last point."""
        tip = base = points[-1]
        shaft, head_left = list(points[:-1]), head
        while shaft:  # walk back from the tip along the path until the head's length is used up
            previous = shaft[-1]
            step = math.hypot(base[0] - previous[0], base[1] - previous[1])
            if step >= head_left:
                x = base[0] + (previous[0] - base[0]) * head_left / step
                base = (x, base[1] + (previous[1] - base[1]) * head_left / step)
                break
            head_left -= step
            base = shaft.pop()
        length = math.hypot(tip[0] - base[0], tip[1] - base[1]) or 1.0
        dx, dy = (tip[0] - base[0]) / length, (tip[1] - base[1]) / length
        if shaft:
            self.line(role, [*shaft, (base[0] + dx * 0.02, base[1] + dy * 0.02)], width)
        half = head * 0.8
        self.poly(role, [tip, (base[0] - dy * half, base[1] + dx * half), (base[0] + dy * half, base[1] - dx * half)])


def arc_points(centre: Point, radius: float, start_deg: float, end_deg: float, count: int) -> list[Point]:
    """Points along a circular arc (degrees; y points down, so angles run clockwise)."""
    angles = [math.radians(a) for a in np.linspace(start_deg, end_deg, count)]
    return [(centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a)) for a in angles]


def _polygons(sides: int, start_deg: float, centre: Point, *rims: tuple[str, float]) -> list[Op]:
    """Concentric regular polygons, outermost first, one per (colour role, circumradius)."""
    angles = [math.radians(start_deg) + 2 * math.pi * k / sides for k in range(sides)]
    unit = [(math.cos(a), math.sin(a)) for a in angles]
    return [("poly", role, [(centre[0] + r * c, centre[1] + r * s) for c, s in unit]) for role, r in rims]


_C, _R3 = (0.5, 0.5), 0.98 / math.sqrt(3)  # _R3: circumradius of an equilateral triangle 0.98 wide
_R8 = 0.49 / math.cos(math.pi / 8)  # an octagon 0.98 wide across its flat sides
_UP, _DOWN = (0.5, 0.5 + _R3 / 4), (0.5, 0.5 - _R3 / 4)  # centres of the warning and the yield triangle
#: style -> (glyph area centre, glyph area size, ops; the first op also draws the sign's silhouette)
BODIES: dict[str, tuple[Point, float, list[Op]]] = {
    "prohibition": (_C, 0.74, [("circle", "red", _C, 0.49), ("circle", "white", _C, 0.39)]),  # red rim
    "end": (_C, 0.8, [("circle", "white", _C, 0.49), ("circle", "grey", _C, 0.475, 0.02)]),  # thin outline
    "no_entry": (_C, 0.9, [("circle", "white", _C, 0.49), ("circle", "red", _C, 0.465)]),
    "mandatory": (_C, 0.8, [("circle", "white", _C, 0.49), ("circle", "blue", _C, 0.465)]),
    "warning": ((0.5, _UP[1] - 0.02), 0.46, _polygons(3, -90, _UP, ("red", _R3), ("white", _R3 * 0.63))),
    "yield": ((0.5, _DOWN[1] - 0.02), 0.46, _polygons(3, 90, _DOWN, ("red", _R3), ("white", _R3 * 0.63))),
    "stop": (_C, 0.9, _polygons(8, 22.5, _C, ("white", _R8), ("red", _R8 * 0.93))),
    "priority": (_C, 0.5, _polygons(4, 0, _C, ("white", 0.49), ("black", 0.36), ("yellow", 0.33))),
}


# -- glyph parts, in local units (about [-0.5, 0.5]) -------------------------------------------------------------
def _strokes(width: float, *paths: list[Point]) -> list[Op]:
    """Black strokes of one width, one per path."""
    return [("line", "black", path, width) for path in paths]


def _car(x: float, role: str, scale: float = 1.0) -> list[Op]:
    """A car seen from behind, centred on x and scaled about (x, 0): cabin, body, wheels."""
    at = lambda dx, dy: (x + dx * scale, dy * scale)
    cabin = [at(-0.085, -0.15), at(0.085, -0.15), at(0.12, -0.02), at(-0.12, -0.02)]
    boxes = [(-0.135, -0.03, 0.135, 0.13), (-0.13, 0.12, -0.07, 0.2), (0.07, 0.12, 0.13, 0.2)]
    return [("poly", role, cabin)] + [("rect", role, *at(x0, y0), *at(x1, y1)) for x0, y0, x1, y1 in boxes]


def _truck(x: float, role: str) -> list[Op]:
    """A lorry seen from behind: taller and wider than a car."""
    boxes = [(x - 0.15, -0.24, x + 0.15, 0.14), (x - 0.15, 0.13, x - 0.08, 0.21), (x + 0.08, 0.13, x + 0.15, 0.21)]
    return [("rect", role, *box) for box in boxes]


def _stripes(count: int, gap: float, width: float) -> list[Op]:
    """Parallel diagonal strokes, upper right to lower left, ending on a circle of radius 0.48: 'end of'."""
    offsets = [(k - (count - 1) / 2) * gap for k in range(count)]
    ends = [(o / math.sqrt(2), math.sqrt(max(0.0, 0.48**2 - o**2)) / math.sqrt(2)) for o in offsets]  # mid, reach
    return _strokes(width, *([(m + r, m - r), (m - r, m + r)] for m, r in ends))


def _person(x: float, y: float, scale: float) -> list[Op]:
    """A walking stick figure centred at (x, y): head, then trunk, legs and arms."""
    at = lambda dx, dy: (x + dx * scale, y + dy * scale)
    limbs = [
        ([(0.01, -0.2), (-0.02, 0.05)], 0.085),
        ([(-0.15, 0.33), (-0.02, 0.04), (0.11, 0.33)], 0.07),
        ([(-0.13, 0.02), (0.0, -0.15), (0.13, -0.01)], 0.055),
    ]
    head = ("circle", "black", at(0.02, -0.29), 0.065 * scale)
    return [head] + [("line", "black", [at(*p) for p in points], width * scale) for points, width in limbs]


def _snowflake() -> list[Op]:
    ops: list[Op] = []
    for arm in (90, 30, 150):  # three strokes through the centre make six arms, each forked twice
        cos_arm, sin_arm = math.cos(math.radians(arm)), math.sin(math.radians(arm))
        ops.append(("line", "black", [(-0.32 * cos_arm, -0.32 * sin_arm), (0.32 * cos_arm, 0.32 * sin_arm)], 0.05))
        for side in (-1, 1):
            fork_x, fork_y = side * 0.2 * cos_arm, side * 0.2 * sin_arm
            for branch in (-40, 40):
                cos_b, sin_b = math.cos(math.radians(arm + branch)), math.sin(math.radians(arm + branch))
                end = (fork_x + side * 0.1 * cos_b, fork_y + side * 0.1 * sin_b)
                ops.append(("line", "black", [(fork_x, fork_y), end], 0.035))
    return ops


def _speed(text: str) -> tuple[str, list[Op]]:
    return "prohibition", [("text", "black", text, 0.78 if len(text) > 2 else 0.62, 0.5)]


_BUMPS = [(float(x), 0.2 - 0.22 * math.sin(math.pi * (x + 0.36) / 0.36) ** 2) for x in np.linspace(-0.36, 0.36, 25)]
_CURVE = [("arrow", "black", [(0.1, 0.34), (0.1, 0.06), (0.06, -0.06), (-0.02, -0.15), (-0.22, -0.26)], 0.1, 0.2)]
_TURN = [("arrow", "white", [(-0.13, 0.36), *arc_points((0.07, 0.0), 0.2, 180, 270, 8), (0.34, -0.2)], 0.13, 0.24)]
_STRAIGHT_OR_TURN = [
    ("arrow", "white", [(-0.1, 0.38), (-0.1, -0.38)], 0.12, 0.24),
    ("arrow", "white", [*arc_points((0.1, 0.1), 0.2, 180, 270, 8), (0.36, -0.1)], 0.12, 0.22),
]
_KEEP = [("arrow", "white", [(-0.27, -0.27), (0.28, 0.28)], 0.14, 0.3)]
_END = _stripes(4, 0.06, 0.028)


_CT, _ST = math.cos(-0.35), math.sin(-0.35)
_DEER = [  # an ellipse tilted -0.35 rad
    (0.22 * math.cos(t) * _CT - 0.08 * math.sin(t) * _ST, 0.04 + 0.22 * math.cos(t) * _ST + 0.08 * math.sin(t) * _CT)
    for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)
]
_S_BEND = [(-0.08, 0.35), (-0.08, 0.22), (0.0, 0.12), (0.1, 0.02), (0.1, -0.06), (0.02, -0.15), (-0.06, -0.22)]
_SKIDS = [
    [(x + 0.05 * math.sin(t * 2 * math.pi), 0.22 + t * 0.14) for t in np.linspace(0, 1, 9)] for x in (-0.12, 0.12)
]
_POST = [(-0.04, -0.34), (0.04, -0.34), (0.07, 0.3), (-0.07, 0.3)]
_MARK = [(-0.055, -0.32), (0.055, -0.32), (0.03, 0.12), (-0.03, 0.12)]
_CAB = [(0.15, -0.06), (0.29, -0.06), (0.36, 0.02), (0.36, 0.1), (0.15, 0.1)]  # of a lorry in profile
_WHEELS = [("circle", "black", (x, 0.12), 0.065) for x in (-0.22, 0.24)]
_LIGHTS = [("circle", role, (0.0, y), 0.075) for y, role in ((-0.23, "red"), (-0.015, "yellow"), (0.2, "green"))]
_ROUNDABOUT = [("arrow", "white", arc_points((0.0, 0.0), 0.27, a, a - 85, 12), 0.1, 0.16) for a in (-90, 30, 150)]
_NARROWS = _strokes(0.08, [(-0.14, 0.34), (-0.14, -0.34)], [(0.16, 0.34), (0.16, 0.06), (0.04, -0.1), (0.04, -0.34)])
_ROAD_WORK = (  # a worker digging: head, trunk, legs, spade; a heap
    [("circle", "black", (0.08, -0.27), 0.065), *_strokes(0.09, [(0.06, -0.18), (-0.04, 0.06)])]
    + _strokes(0.07, [(-0.16, 0.32), (-0.04, 0.05), (0.06, 0.32)])
    + _strokes(0.045, [(0.03, -0.12), (0.2, 0.02), (0.3, 0.22)])
    + [("poly", "black", [(-0.38, 0.32), (-0.27, 0.16), (-0.17, 0.32)])]
)
_BICYCLE = (  # wheels, frame, handlebar, rider
    [("circle", "black", (x, 0.14), 0.13, 0.04) for x in (-0.2, 0.2)]
    + _strokes(0.045, [(-0.2, 0.14), (-0.04, -0.06), (0.2, 0.14)], [(-0.04, -0.06), (0.13, -0.06), (0.2, 0.14)])
    + _strokes(0.04, [(0.13, -0.06), (0.1, -0.16), (0.18, -0.17)])
    + [("circle", "black", (-0.07, -0.25), 0.055), *_strokes(0.06, [(-0.07, -0.19), (-0.04, -0.06)])]
)
_WILD_ANIMAL = (  # a deer: body, neck, head, antlers, legs
    [("poly", "black", _DEER), *_strokes(0.07, [(0.15, -0.04), (0.24, -0.2)])]
    + [("poly", "black", [(0.2, -0.24), (0.3, -0.26), (0.36, -0.2), (0.26, -0.17)])]
    + _strokes(0.03, [(0.22, -0.24), (0.18, -0.36), (0.12, -0.38)], [(0.18, -0.32), (0.24, -0.38)])
    + _strokes(0.045, [(-0.16, 0.1), (-0.3, 0.22), (-0.36, 0.32)], [(-0.12, 0.12), (-0.2, 0.3)])
    + _strokes(0.045, [(0.1, 0.0), (0.22, 0.12), (0.3, 0.1)], [(0.08, 0.04), (0.12, 0.24)])
)
#: class id -> (body style, glyph ops). Ids follow the real GTSRB classes.
DESIGNS: tuple[tuple[str, list[Op]], ...] = (
    *(_speed(limit) for limit in ("20", "30", "50", "60", "70", "80")),  # 0-5
    ("end", [("text", "grey", "80", 0.62, 0.5), *_END]),
    _speed("100"),
    _speed("120"),
    ("prohibition", _car(-0.17, "red") + _car(0.17, "black")),  # no passing
    ("prohibition", _truck(-0.17, "red") + _car(0.18, "black")),  # no passing for trucks
    ("warning", [("poly", "black", _POST), ("rect", "black", -0.24, -0.05, 0.24, 0.02)]),  # right of way
    ("priority", []),
    ("yield", []),
    ("stop", [("text", "white", "STOP", 0.82, 0.4)]),
    ("prohibition", []),  # no vehicles
    ("prohibition", [("rect", "black", -0.36, -0.16, 0.12, 0.1), ("poly", "black", _CAB), *_WHEELS]),  # no trucks
    ("no_entry", [("rect", "white", -0.36, -0.085, 0.36, 0.085)]),
    ("warning", [("poly", "black", _MARK), ("circle", "black", (0.0, 0.24), 0.06)]),  # caution
    ("warning", _CURVE),
    ("warning", _CURVE),  # mirrored
    ("warning", [("arrow", "black", [*_S_BEND, (-0.06, -0.36)], 0.09, 0.17)]),  # double curve
    ("warning", [("poly", "black", [*_BUMPS, (0.36, 0.3), (-0.36, 0.3)])]),  # bumpy road
    ("warning", _car(0.0, "black", 0.9) + _strokes(0.04, *_SKIDS)),  # slippery road: a car and its skid marks
    ("warning", _NARROWS),  # road narrows
    ("warning", _ROAD_WORK),  # road work
    ("warning", [("rect", "black", -0.11, -0.36, 0.11, 0.33), *_LIGHTS]),  # traffic signals
    ("warning", _person(0.0, 0.0, 1.0)),  # pedestrians
    ("warning", _person(-0.13, -0.02, 0.95) + _person(0.16, 0.06, 0.72)),  # children
    ("warning", _BICYCLE),  # bicycles
    ("warning", _snowflake()),  # ice
    ("warning", _WILD_ANIMAL),  # wild animals
    ("end", _stripes(5, 0.07, 0.03)),  # end of all limits
    ("mandatory", _TURN),
    ("mandatory", _TURN),  # mirrored
    ("mandatory", [("arrow", "white", [(0.0, 0.38), (0.0, -0.38)], 0.14, 0.3)]),  # ahead only
    ("mandatory", _STRAIGHT_OR_TURN),
    ("mandatory", _STRAIGHT_OR_TURN),  # mirrored
    ("mandatory", _KEEP),
    ("mandatory", _KEEP),  # mirrored
    ("mandatory", _ROUNDABOUT),  # roundabout
    ("end", _car(-0.17, "grey") + _car(0.17, "grey") + _END),
    ("end", _truck(-0.17, "grey") + _car(0.18, "grey") + _END),
)
MIRRORED = {20, 34, 37, 39}  # left versus right: the glyph of the class before, mirrored
assert len(DESIGNS) == NUM_CLASSES


def draw_sign(class_id: int, palette: dict[str, Color], side: int = TEMPLATE_SIDE) -> np.ndarray:
    """One class's sign in this palette as a side x side x 4 uint8 array: RGB plus the silhouette's coverage."""
    style, glyph = DESIGNS[class_id]
    centre, unit, body = BODIES[style]
    rgb, mask = np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8)
    Pen(mask, dict.fromkeys(palette, 255)).draw(body[:1])
    Pen(rgb, palette).draw(body)
    Pen(rgb, palette, centre, unit, class_id in MIRRORED).draw(glyph)
    return np.dstack([rgb, mask])

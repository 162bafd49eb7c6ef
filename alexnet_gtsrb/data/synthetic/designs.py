"""What each of the 43 signs looks like: glyph drawings, sign bodies (shape and rim/fill style), the design table.

Each class is a distinct sign design modelled loosely on the real GTSRB class with the same id (shape, rim
colour, fill colour, glyph). Glyphs are drawn in local units (about [-0.5, 0.5], see :class:`Glyph`) in
colour roles: black on warning/prohibition signs, white on blue mandatory signs. A mirrored design (left
versus right) reuses one drawing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from alexnet_gtsrb.data.classes import CLASS_NAMES, NUM_CLASSES
from alexnet_gtsrb.data.synthetic.canvas import Canvas, Color, Glyph, Point, arc_points, regular_polygon


# ---------------------------------------------------------------------------------------------------
# Glyph parts
# ---------------------------------------------------------------------------------------------------
def _car_from_behind(glyph: Glyph, x: float, role: str, scale: float = 1.0) -> None:
    """A car seen from behind (no-passing signs), centred on x and scaled about (x, 0)."""

    def at(dx: float, dy: float) -> Point:
        return x + dx * scale, dy * scale

    glyph.poly([at(-0.085, -0.15), at(0.085, -0.15), at(0.12, -0.02), at(-0.12, -0.02)], role)  # cabin
    glyph.rect(*at(-0.135, -0.03), *at(0.135, 0.13), role)  # body
    glyph.rect(*at(-0.13, 0.12), *at(-0.07, 0.2), role)  # wheels
    glyph.rect(*at(0.07, 0.12), *at(0.13, 0.2), role)


def _truck_from_behind(glyph: Glyph, x: float, role: str) -> None:
    """A lorry seen from behind: taller and wider than a car."""
    glyph.rect(x - 0.15, -0.24, x + 0.15, 0.14, role)
    glyph.rect(x - 0.15, 0.13, x - 0.08, 0.21, role)
    glyph.rect(x + 0.08, 0.13, x + 0.15, 0.21, role)


def _truck_in_profile(glyph: Glyph, role: str) -> None:
    """A lorry in profile (vehicles over 3.5 t prohibited)."""
    glyph.rect(-0.36, -0.16, 0.12, 0.1, role)
    glyph.poly([(0.15, -0.06), (0.29, -0.06), (0.36, 0.02), (0.36, 0.1), (0.15, 0.1)], role)
    glyph.circle((-0.22, 0.12), 0.065, role)
    glyph.circle((0.24, 0.12), 0.065, role)


def _end_stripes(glyph: Glyph, role: str, count: int = 5, gap: float = 0.075, width: float = 0.03) -> None:
    """Parallel diagonal strokes from upper right to lower left: the 'end of restriction' band."""
    for k in range(count):
        offset = (k - (count - 1) / 2) * gap  # distance of this stroke from the centre, across the band
        half_length = math.sqrt(max(0.0, 0.48**2 - offset**2))  # the stroke ends on a circle of radius 0.48
        mid_x, mid_y = offset / math.sqrt(2), offset / math.sqrt(2)
        reach = half_length / math.sqrt(2)
        glyph.line([(mid_x + reach, mid_y - reach), (mid_x - reach, mid_y + reach)], role, width)


def _walking_person(glyph: Glyph, x: float, y: float, scale: float, role: str) -> None:
    """A walking stick figure centred at (x, y)."""

    def at(dx: float, dy: float) -> Point:
        return x + dx * scale, y + dy * scale

    glyph.circle(at(0.02, -0.29), 0.065 * scale, role)  # head
    glyph.line([at(0.01, -0.2), at(-0.02, 0.05)], role, 0.085 * scale)  # trunk
    glyph.line([at(-0.15, 0.33), at(-0.02, 0.04), at(0.11, 0.33)], role, 0.07 * scale)  # legs
    glyph.line([at(-0.13, 0.02), at(0.0, -0.15), at(0.13, -0.01)], role, 0.055 * scale)  # arms


# ---------------------------------------------------------------------------------------------------
# Glyphs, one per design (local units; mirrored designs reuse the right- or left-facing drawing)
# ---------------------------------------------------------------------------------------------------
def _speed_limit(text: str) -> Callable[[Glyph], None]:
    """Speed-limit number."""
    return lambda glyph: glyph.text(text, "black", 0.78 if len(text) > 2 else 0.62, 0.5)


def _end_of_80_limit(glyph: Glyph) -> None:
    glyph.text("80", "grey", 0.62, 0.5)
    _end_stripes(glyph, "black", count=4, gap=0.06, width=0.028)


def _no_passing(glyph: Glyph) -> None:
    _car_from_behind(glyph, -0.17, "red")
    _car_from_behind(glyph, 0.17, "black")


def _no_passing_trucks(glyph: Glyph) -> None:
    _truck_from_behind(glyph, -0.17, "red")
    _car_from_behind(glyph, 0.18, "black")


def _right_of_way(glyph: Glyph) -> None:
    glyph.poly([(-0.04, -0.34), (0.04, -0.34), (0.07, 0.3), (-0.07, 0.3)], "black")
    glyph.rect(-0.24, -0.05, 0.24, 0.02, "black")


def _stop(glyph: Glyph) -> None:
    glyph.text("STOP", "white", 0.82, 0.4)


def _trucks_prohibited(glyph: Glyph) -> None:
    _truck_in_profile(glyph, "black")


def _no_entry(glyph: Glyph) -> None:
    glyph.rect(-0.36, -0.085, 0.36, 0.085, "white")


def _general_caution(glyph: Glyph) -> None:
    glyph.poly([(-0.055, -0.32), (0.055, -0.32), (0.03, 0.12), (-0.03, 0.12)], "black")
    glyph.circle((0.0, 0.24), 0.06, "black")


def _curve_left(glyph: Glyph) -> None:
    glyph.arrow([(0.1, 0.34), (0.1, 0.06), (0.06, -0.06), (-0.02, -0.15), (-0.22, -0.26)], "black", 0.1, 0.2)


def _double_curve(glyph: Glyph) -> None:
    glyph.arrow(
        [
            (-0.08, 0.35),
            (-0.08, 0.22),
            (0.0, 0.12),
            (0.1, 0.02),
            (0.1, -0.06),
            (0.02, -0.15),
            (-0.06, -0.22),
            (-0.06, -0.36),
        ],
        "black",
        0.09,
        0.17,
    )


def _bumpy_road(glyph: Glyph) -> None:
    xs = np.linspace(-0.36, 0.36, 25)
    top = [(float(x), 0.2 - 0.22 * math.sin(math.pi * (x + 0.36) / 0.36) ** 2) for x in xs]
    glyph.poly([*top, (0.36, 0.3), (-0.36, 0.3)], "black")


def _slippery_road(glyph: Glyph) -> None:
    _car_from_behind(glyph, 0.0, "black", 0.9)
    for x0 in (-0.12, 0.12):
        glyph.line(
            [(x0 + 0.05 * math.sin(t * 2 * math.pi), 0.22 + t * 0.14) for t in np.linspace(0, 1, 9)], "black", 0.04
        )


def _road_narrows(glyph: Glyph) -> None:
    glyph.line([(-0.14, 0.34), (-0.14, -0.34)], "black", 0.08)
    glyph.line([(0.16, 0.34), (0.16, 0.06), (0.04, -0.1), (0.04, -0.34)], "black", 0.08)


def _road_work(glyph: Glyph) -> None:
    glyph.circle((0.08, -0.27), 0.065, "black")
    glyph.line([(0.06, -0.18), (-0.04, 0.06)], "black", 0.09)
    glyph.line([(-0.16, 0.32), (-0.04, 0.05), (0.06, 0.32)], "black", 0.07)
    glyph.line([(0.03, -0.12), (0.2, 0.02), (0.3, 0.22)], "black", 0.045)
    glyph.poly([(-0.38, 0.32), (-0.27, 0.16), (-0.17, 0.32)], "black")


def _traffic_signals(glyph: Glyph) -> None:
    glyph.rect(-0.11, -0.36, 0.11, 0.33, "black")
    for y, role in ((-0.23, "red"), (-0.015, "yellow"), (0.2, "green")):
        glyph.circle((0.0, y), 0.075, role)


def _pedestrians(glyph: Glyph) -> None:
    _walking_person(glyph, 0.0, 0.0, 1.0, "black")


def _children(glyph: Glyph) -> None:
    _walking_person(glyph, -0.13, -0.02, 0.95, "black")
    _walking_person(glyph, 0.16, 0.06, 0.72, "black")


def _bicycle(glyph: Glyph) -> None:
    for x in (-0.2, 0.2):
        glyph.circle((x, 0.14), 0.13, "black", 0.04)
    glyph.line([(-0.2, 0.14), (-0.04, -0.06), (0.2, 0.14)], "black", 0.045)
    glyph.line([(-0.04, -0.06), (0.13, -0.06), (0.2, 0.14)], "black", 0.045)
    glyph.line([(0.13, -0.06), (0.1, -0.16), (0.18, -0.17)], "black", 0.04)
    glyph.circle((-0.07, -0.25), 0.055, "black")
    glyph.line([(-0.07, -0.19), (-0.04, -0.06)], "black", 0.06)


def _snowflake(glyph: Glyph) -> None:
    for arm in (90, 30, 150):  # three strokes through the centre make six arms
        cos_arm, sin_arm = math.cos(math.radians(arm)), math.sin(math.radians(arm))
        glyph.line([(-0.32 * cos_arm, -0.32 * sin_arm), (0.32 * cos_arm, 0.32 * sin_arm)], "black", 0.05)
        for side in (-1, 1):
            fork_x, fork_y = side * 0.2 * cos_arm, side * 0.2 * sin_arm
            for branch in (-40, 40):
                cos_b, sin_b = math.cos(math.radians(arm + branch)), math.sin(math.radians(arm + branch))
                glyph.line(
                    [(fork_x, fork_y), (fork_x + side * 0.1 * cos_b, fork_y + side * 0.1 * sin_b)], "black", 0.035
                )


def _deer(glyph: Glyph) -> None:
    body = [
        (
            0.0 + 0.22 * math.cos(t) * math.cos(-0.35) - 0.08 * math.sin(t) * math.sin(-0.35),
            0.04 + 0.22 * math.cos(t) * math.sin(-0.35) + 0.08 * math.sin(t) * math.cos(-0.35),
        )
        for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)
    ]
    glyph.poly(body, "black")
    glyph.line([(0.15, -0.04), (0.24, -0.2)], "black", 0.07)
    glyph.poly([(0.2, -0.24), (0.3, -0.26), (0.36, -0.2), (0.26, -0.17)], "black")
    glyph.line([(0.22, -0.24), (0.18, -0.36), (0.12, -0.38)], "black", 0.03)
    glyph.line([(0.18, -0.32), (0.24, -0.38)], "black", 0.03)
    glyph.line([(-0.16, 0.1), (-0.3, 0.22), (-0.36, 0.32)], "black", 0.045)
    glyph.line([(-0.12, 0.12), (-0.2, 0.3)], "black", 0.045)
    glyph.line([(0.1, 0.0), (0.22, 0.12), (0.3, 0.1)], "black", 0.045)
    glyph.line([(0.08, 0.04), (0.12, 0.24)], "black", 0.045)


def _end_of_all_limits(glyph: Glyph) -> None:
    _end_stripes(glyph, "black", count=5, gap=0.07, width=0.03)


def _turn_right(glyph: Glyph) -> None:
    glyph.arrow([(-0.13, 0.36), *arc_points((0.07, 0.0), 0.2, 180, 270, 8), (0.34, -0.2)], "white", 0.13, 0.24)


def _ahead_only(glyph: Glyph) -> None:
    glyph.arrow([(0.0, 0.38), (0.0, -0.38)], "white", 0.14, 0.3)


def _straight_or_right(glyph: Glyph) -> None:
    glyph.arrow([(-0.1, 0.38), (-0.1, -0.38)], "white", 0.12, 0.24)
    glyph.arrow([*arc_points((0.1, 0.1), 0.2, 180, 270, 8), (0.36, -0.1)], "white", 0.12, 0.22)


def _keep_right(glyph: Glyph) -> None:
    glyph.arrow([(-0.27, -0.27), (0.28, 0.28)], "white", 0.14, 0.3)


def _roundabout(glyph: Glyph) -> None:
    for k in range(3):
        start = -90 + 120 * k
        glyph.arrow(arc_points((0.0, 0.0), 0.27, start, start - 85, 12), "white", 0.1, 0.16)


def _end_of_no_passing(glyph: Glyph) -> None:
    _car_from_behind(glyph, -0.17, "grey")
    _car_from_behind(glyph, 0.17, "grey")
    _end_stripes(glyph, "black", count=4, gap=0.06, width=0.028)


def _end_of_no_passing_trucks(glyph: Glyph) -> None:
    _truck_from_behind(glyph, -0.17, "grey")
    _car_from_behind(glyph, 0.18, "grey")
    _end_stripes(glyph, "black", count=4, gap=0.06, width=0.028)


def _no_glyph(glyph: Glyph) -> None:
    """Signs recognised by their body alone (priority road, yield, no vehicles)."""
    return None


# ---------------------------------------------------------------------------------------------------
# Sign bodies: (shape, rim/fill style) -> draws the silhouette and returns the glyph area (centre, size)
# ---------------------------------------------------------------------------------------------------
TRIANGLE_CIRCUMRADIUS = 0.98 / math.sqrt(3)  # circumradius of an equilateral triangle 0.98 wide


def draw_body(canvas: Canvas, style: str, palette: dict[str, Color]) -> tuple[Point, float]:
    """Draw the sign body in one of the styles and return the glyph area's centre and size."""
    if style == "prohibition":  # red rim, white disc
        canvas.circle((0.5, 0.5), 0.49, palette["red"], mask=True)
        canvas.circle((0.5, 0.5), 0.39, palette["white"])
        return (0.5, 0.5), 0.74
    if style == "end":  # white disc, thin dark outline
        canvas.circle((0.5, 0.5), 0.49, palette["white"], mask=True)
        canvas.circle((0.5, 0.5), 0.475, palette["grey"], 0.02)
        return (0.5, 0.5), 0.8
    if style == "no_entry":  # red disc, thin white border
        canvas.circle((0.5, 0.5), 0.49, palette["white"], mask=True)
        canvas.circle((0.5, 0.5), 0.465, palette["red"])
        return (0.5, 0.5), 0.9
    if style == "mandatory":  # blue disc, thin white border
        canvas.circle((0.5, 0.5), 0.49, palette["white"], mask=True)
        canvas.circle((0.5, 0.5), 0.465, palette["blue"])
        return (0.5, 0.5), 0.8
    if style in ("warning", "yield"):  # red rim triangle, white inside (pointing up / down)
        up = style == "warning"
        centre = (0.5, 0.5 + TRIANGLE_CIRCUMRADIUS / 4) if up else (0.5, 0.5 - TRIANGLE_CIRCUMRADIUS / 4)
        start = -90 if up else 90
        canvas.poly(regular_polygon(3, TRIANGLE_CIRCUMRADIUS, start, centre), palette["red"], mask=True)
        canvas.poly(regular_polygon(3, TRIANGLE_CIRCUMRADIUS * 0.63, start, centre), palette["white"])
        return (0.5, centre[1] - 0.02), 0.46
    if style == "stop":  # red octagon, thin white border
        radius = 0.49 / math.cos(math.pi / 8)  # an octagon 0.98 wide across its flat sides
        canvas.poly(regular_polygon(8, radius, 22.5), palette["white"], mask=True)
        canvas.poly(regular_polygon(8, radius * 0.93, 22.5), palette["red"])
        return (0.5, 0.5), 0.9
    if style == "priority":  # white diamond, thin dark line, yellow centre
        canvas.poly(regular_polygon(4, 0.49, 0), palette["white"], mask=True)
        canvas.poly(regular_polygon(4, 0.36, 0), palette["black"])
        canvas.poly(regular_polygon(4, 0.33, 0), palette["yellow"])
        return (0.5, 0.5), 0.5
    raise ValueError(f"unknown sign style {style!r}")


class Design(NamedTuple):
    """How one class's sign looks: its body style (see :func:`draw_body`), its glyph, and whether it is mirrored."""

    style: str
    draw_glyph: Callable[[Glyph], None]
    mirrored: bool


#: class id -> (body style, glyph drawer, mirrored glyph). Ids follow the real GTSRB classes.
DESIGNS: tuple[Design, ...] = tuple(
    Design(*row)
    for row in (
        ("prohibition", _speed_limit("20"), False),
        ("prohibition", _speed_limit("30"), False),
        ("prohibition", _speed_limit("50"), False),
        ("prohibition", _speed_limit("60"), False),
        ("prohibition", _speed_limit("70"), False),
        ("prohibition", _speed_limit("80"), False),
        ("end", _end_of_80_limit, False),
        ("prohibition", _speed_limit("100"), False),
        ("prohibition", _speed_limit("120"), False),
        ("prohibition", _no_passing, False),
        ("prohibition", _no_passing_trucks, False),
        ("warning", _right_of_way, False),
        ("priority", _no_glyph, False),
        ("yield", _no_glyph, False),
        ("stop", _stop, False),
        ("prohibition", _no_glyph, False),
        ("prohibition", _trucks_prohibited, False),
        ("no_entry", _no_entry, False),
        ("warning", _general_caution, False),
        ("warning", _curve_left, False),
        ("warning", _curve_left, True),
        ("warning", _double_curve, False),
        ("warning", _bumpy_road, False),
        ("warning", _slippery_road, False),
        ("warning", _road_narrows, False),
        ("warning", _road_work, False),
        ("warning", _traffic_signals, False),
        ("warning", _pedestrians, False),
        ("warning", _children, False),
        ("warning", _bicycle, False),
        ("warning", _snowflake, False),
        ("warning", _deer, False),
        ("end", _end_of_all_limits, False),
        ("mandatory", _turn_right, False),
        ("mandatory", _turn_right, True),
        ("mandatory", _ahead_only, False),
        ("mandatory", _straight_or_right, False),
        ("mandatory", _straight_or_right, True),
        ("mandatory", _keep_right, False),
        ("mandatory", _keep_right, True),
        ("mandatory", _roundabout, False),
        ("end", _end_of_no_passing, False),
        ("end", _end_of_no_passing_trucks, False),
    )
)
assert len(DESIGNS) == NUM_CLASSES == len(CLASS_NAMES)

"""Drawing primitives: a square RGB sign template with its coverage mask, and a glyph pen in local units.

Everything is drawn in normalised coordinates (the template spans [0, 1] on both axes, y pointing down)
with anti-aliased, sub-pixel cv2 drawing, so that the designs do not depend on the template's pixel size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: Side of the per-track sign template, px (drawn once, then shrunk per frame).
TEMPLATE_SIDE = 160
#: Sub-pixel bits for cv2 drawing: coordinates are passed as fixed-point numbers with this many fraction bits.
SUBPIXEL_BITS = 4
SUBPIXEL_SCALE = 1 << SUBPIXEL_BITS
ANTIALIAS = cv2.LINE_AA

Color = tuple[int, int, int]
Point = tuple[float, float]


class Canvas:
    """A square RGB sign template plus its coverage mask, drawn in normalised [0, 1] coordinates."""

    def __init__(self, size: int = TEMPLATE_SIDE) -> None:
        self.size = size
        self.img = np.zeros((size, size, 3), np.uint8)
        self.mask = np.zeros((size, size), np.uint8)

    def _fixed_point(self, point: Point) -> tuple[int, int]:
        """Normalised point to cv2's sub-pixel fixed-point pixel coordinates."""
        return round(point[0] * self.size * SUBPIXEL_SCALE), round(point[1] * self.size * SUBPIXEL_SCALE)

    def _fixed_points(self, points: Sequence[Point]) -> np.ndarray:
        """Normalised points as the int32 (N, 1, 2) array that cv2's polygon functions take."""
        return np.array([self._fixed_point(p) for p in points], np.int32).reshape(-1, 1, 2)

    def _stroke_width(self, width: float) -> int:
        """Normalised stroke width in whole pixels (at least 1)."""
        return max(1, round(width * self.size))

    def poly(self, points: Sequence[Point], color: Color, mask: bool = False) -> None:
        """Filled polygon; with mask=True it also defines the sign's silhouette."""
        cv2.fillPoly(self.img, [self._fixed_points(points)], color, ANTIALIAS, SUBPIXEL_BITS)
        if mask:
            cv2.fillPoly(self.mask, [self._fixed_points(points)], 255, ANTIALIAS, SUBPIXEL_BITS)

    def circle(
        self, centre: Point, radius: float, color: Color, width: float | None = None, mask: bool = False
    ) -> None:
        """Filled disc, or a ring of the given width."""
        thickness = -1 if width is None else self._stroke_width(width)
        fixed_radius = round(radius * self.size * SUBPIXEL_SCALE)
        cv2.circle(self.img, self._fixed_point(centre), fixed_radius, color, thickness, ANTIALIAS, SUBPIXEL_BITS)
        if mask:
            cv2.circle(self.mask, self._fixed_point(centre), fixed_radius, 255, thickness, ANTIALIAS, SUBPIXEL_BITS)

    def polyline(self, points: Sequence[Point], color: Color, width: float, closed: bool = False) -> None:
        """Open (or closed) stroke of the given width through the points."""
        cv2.polylines(
            self.img, [self._fixed_points(points)], closed, color, self._stroke_width(width), ANTIALIAS, SUBPIXEL_BITS
        )

    def text(self, text: str, centre: Point, width: float, height: float, color: Color, bold: float = 1.0) -> None:
        """Text centred on centre, scaled to fit a width x height box."""
        font = cv2.FONT_HERSHEY_DUPLEX
        (text_width, text_height), _ = cv2.getTextSize(text, font, 1.0, 2)
        scale = min(width * self.size / text_width, height * self.size / text_height)
        thickness = max(2, round(scale * 2.4 * bold))
        (text_width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
        origin = (round(centre[0] * self.size - text_width / 2), round(centre[1] * self.size + text_height / 2))
        cv2.putText(self.img, text, origin, font, scale, color, thickness, ANTIALIAS)


def regular_polygon(sides: int, radius: float, start_deg: float, centre: Point = (0.5, 0.5)) -> list[Point]:
    """Vertices of a regular polygon with the given number of sides and circumradius (y points down)."""
    start = math.radians(start_deg)
    return [
        (
            centre[0] + radius * math.cos(start + 2 * math.pi * k / sides),
            centre[1] + radius * math.sin(start + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def arc_points(centre: Point, radius: float, start_deg: float, end_deg: float, count: int = 10) -> list[Point]:
    """Points along a circular arc from start_deg to end_deg (degrees, y down so angles run clockwise)."""
    return [
        (centre[0] + radius * math.cos(math.radians(a)), centre[1] + radius * math.sin(math.radians(a)))
        for a in np.linspace(start_deg, end_deg, count)
    ]


class Glyph:
    """Draws a glyph in local units (about [-0.5, 0.5]) centred on the sign's free area, optionally mirrored.

    Colours are named by role ("black", "white", "red", ...) and looked up in the sign's palette, so one
    drawing serves every physical sign of a class whatever its paint.
    """

    def __init__(
        self, canvas: Canvas, centre: Point, unit: float, palette: dict[str, Color], mirror: bool = False
    ) -> None:
        self.canvas, self.centre, self.unit, self.palette, self.mirror = canvas, centre, unit, palette, mirror

    def to_canvas(self, point: Point) -> Point:
        """Local point to canvas coordinates."""
        x = -point[0] if self.mirror else point[0]
        return self.centre[0] + x * self.unit, self.centre[1] + point[1] * self.unit

    def poly(self, points: Sequence[Point], role: str) -> None:
        """Filled polygon in local units."""
        self.canvas.poly([self.to_canvas(p) for p in points], self.palette[role])

    def rect(self, x0: float, y0: float, x1: float, y1: float, role: str) -> None:
        """Filled axis-aligned rectangle in local units."""
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], role)

    def line(self, points: Sequence[Point], role: str, width: float) -> None:
        """Stroke through points in local units."""
        self.canvas.polyline([self.to_canvas(p) for p in points], self.palette[role], width * self.unit)

    def circle(self, centre: Point, radius: float, role: str, width: float | None = None) -> None:
        """Disc or ring in local units."""
        ring_width = None if width is None else width * self.unit
        self.canvas.circle(self.to_canvas(centre), radius * self.unit, self.palette[role], ring_width)

    def text(self, text: str, role: str, width: float, height: float, dy: float = 0.0) -> None:
        """Centred text in local units, shifted down by dy."""
        self.canvas.text(text, self.to_canvas((0.0, dy)), width * self.unit, height * self.unit, self.palette[role])

    def arrow(self, points: Sequence[Point], role: str, width: float = 0.13, head: float = 0.26) -> None:
        """Stroke through points ending in a filled triangular arrow head (of length head) at the last point."""
        tip = points[-1]
        shaft, head_left, base = list(points[:-1]), head, points[-1]
        while shaft:  # walk back from the tip along the path until the head's length is used up
            previous = shaft[-1]
            step = math.hypot(base[0] - previous[0], base[1] - previous[1])
            if step >= head_left:
                base = (
                    base[0] + (previous[0] - base[0]) * head_left / step,
                    base[1] + (previous[1] - base[1]) * head_left / step,
                )
                break
            head_left -= step
            base = shaft.pop()
        length = math.hypot(tip[0] - base[0], tip[1] - base[1]) or 1.0
        dx, dy = (tip[0] - base[0]) / length, (tip[1] - base[1]) / length
        if shaft:
            self.line([*shaft, (base[0] + dx * 0.02, base[1] + dy * 0.02)], role, width)
        half_width = head * 0.8
        self.poly(
            [
                tip,
                (base[0] - dy * half_width, base[1] + dx * half_width),
                (base[0] + dy * half_width, base[1] - dx * half_width),
            ],
            role,
        )

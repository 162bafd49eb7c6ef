"""Offline demo data: procedurally drawn traffic signs written in the official GTSRB archive layout.

``generate(root)`` writes, with no internet and no real data::

    <root>/GTSRB/Final_Training/Images/000NN/TTTTT_FFFFF.ppm   + GT-000NN.csv   (43 class folders)
    <root>/GTSRB/Final_Test/Images/NNNNN.ppm                   + GT-final_test.csv
    <root>/.synthetic_complete.json                            (parameters; written last)

Each of the 43 classes is a distinct sign design modelled loosely on the real GTSRB class with the same id
(shape, rim colour, fill colour, glyph). A training *track* is one physical sign (fixed colours, fading,
shading, background, viewing angle) seen in several frames of growing size, so frames of one track are
near-duplicates, as in the real data; this makes track-aware train/val splitting matter. Every test image
is its own independent sign. Output is deterministic for a given seed (same bytes).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from alexnet_gtsrb.data.classes import CLASS_NAMES, NUM_CLASSES

__all__ = ["CSV_HEADER", "FORMAT_VERSION", "MARKER_NAME", "default_synthetic_root", "generate", "main"]

#: Bump when the drawing or layout changes, so cached trees from older code are regenerated.
FORMAT_VERSION = 1
MARKER_NAME = ".synthetic_complete.json"
CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"

_S = 160  # side of the per-track sign template, px (drawn once, then shrunk per frame)
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_T = 72  # side of the reduced template, px (>= the largest sign)
_BG = 96  # side of the per-track background, px
_MIN_IMG, _MAX_IMG = 30, 90  # image side range, px
_MIN_SIGN, _MAX_SIGN = 20, 70  # sign side range, px
_STALE_TMP_S = 3600  # temp folders older than this are leftovers of killed runs

Color = tuple[int, int, int]
Pt = tuple[float, float]


def default_synthetic_root() -> Path:
    """Where the demo data is cached: ``$ALEXNET_GTSRB_CACHE/synthetic`` or ``~/.cache/alexnet_gtsrb/synthetic``."""
    base = os.environ.get("ALEXNET_GTSRB_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "alexnet_gtsrb") / "synthetic"


# ---------------------------------------------------------------------------------------------------
# Drawing primitives
# ---------------------------------------------------------------------------------------------------
class _Canvas:
    """A square RGB sign template plus its coverage mask, drawn in normalised [0, 1] coordinates."""

    def __init__(self, size: int = _S) -> None:
        self.s = size
        self.img = np.zeros((size, size, 3), np.uint8)
        self.mask = np.zeros((size, size), np.uint8)

    def _p(self, p: Pt) -> tuple[int, int]:
        return round(p[0] * self.s * _ONE), round(p[1] * self.s * _ONE)

    def _pts(self, pts: Sequence[Pt]) -> np.ndarray:
        return np.array([self._p(p) for p in pts], np.int32).reshape(-1, 1, 2)

    def _w(self, w: float) -> int:
        return max(1, round(w * self.s))

    def poly(self, pts: Sequence[Pt], color: Color, mask: bool = False) -> None:
        """Filled polygon; with mask=True it also defines the sign's silhouette."""
        cv2.fillPoly(self.img, [self._pts(pts)], color, _AA, _SHIFT)
        if mask:
            cv2.fillPoly(self.mask, [self._pts(pts)], 255, _AA, _SHIFT)

    def circle(self, c: Pt, r: float, color: Color, w: float | None = None, mask: bool = False) -> None:
        """Filled disc, or a ring of width w."""
        th = -1 if w is None else self._w(w)
        cv2.circle(self.img, self._p(c), round(r * self.s * _ONE), color, th, _AA, _SHIFT)
        if mask:
            cv2.circle(self.mask, self._p(c), round(r * self.s * _ONE), 255, th, _AA, _SHIFT)

    def polyline(self, pts: Sequence[Pt], color: Color, w: float, closed: bool = False) -> None:
        """Open (or closed) stroke of width w through the points."""
        cv2.polylines(self.img, [self._pts(pts)], closed, color, self._w(w), _AA, _SHIFT)

    def text(self, s: str, c: Pt, width: float, height: float, color: Color, bold: float = 1.0) -> None:
        """Text centred on c, scaled to fit a width x height box."""
        font = cv2.FONT_HERSHEY_DUPLEX
        (tw, th), _ = cv2.getTextSize(s, font, 1.0, 2)
        scale = min(width * self.s / tw, height * self.s / th)
        thick = max(2, round(scale * 2.4 * bold))
        (tw, th), _ = cv2.getTextSize(s, font, scale, thick)
        org = (round(c[0] * self.s - tw / 2), round(c[1] * self.s + th / 2))
        cv2.putText(self.img, s, org, font, scale, color, thick, _AA)


def _regular(n: int, r: float, start_deg: float, c: Pt = (0.5, 0.5)) -> list[Pt]:
    """Vertices of a regular n-gon of circumradius r (y points down)."""
    a0 = math.radians(start_deg)
    return [
        (c[0] + r * math.cos(a0 + 2 * math.pi * k / n), c[1] + r * math.sin(a0 + 2 * math.pi * k / n)) for k in range(n)
    ]


def _arc(c: Pt, r: float, a0: float, a1: float, n: int = 10) -> list[Pt]:
    """Points along a circular arc from angle a0 to a1 (degrees, y down so angles run clockwise)."""
    return [
        (c[0] + r * math.cos(math.radians(a)), c[1] + r * math.sin(math.radians(a))) for a in np.linspace(a0, a1, n)
    ]


class _Glyph:
    """Draws a glyph in local units (about [-0.5, 0.5]) centred on the sign's free area, optionally mirrored."""

    def __init__(self, cv: _Canvas, c: Pt, u: float, pal: dict[str, Color], mirror: bool = False) -> None:
        self.cv, self.c, self.u, self.pal, self.mirror = cv, c, u, pal, mirror

    def pt(self, p: Pt) -> Pt:
        """Local point to canvas coordinates."""
        return self.c[0] + (-p[0] if self.mirror else p[0]) * self.u, self.c[1] + p[1] * self.u

    def poly(self, pts: Sequence[Pt], role: str) -> None:
        """Filled polygon in local units."""
        self.cv.poly([self.pt(p) for p in pts], self.pal[role])

    def rect(self, x0: float, y0: float, x1: float, y1: float, role: str) -> None:
        """Filled axis-aligned rectangle in local units."""
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], role)

    def line(self, pts: Sequence[Pt], role: str, w: float) -> None:
        """Stroke through points in local units."""
        self.cv.polyline([self.pt(p) for p in pts], self.pal[role], w * self.u)

    def circle(self, c: Pt, r: float, role: str, w: float | None = None) -> None:
        """Disc or ring in local units."""
        self.cv.circle(self.pt(c), r * self.u, self.pal[role], None if w is None else w * self.u)

    def text(self, s: str, role: str, width: float, height: float, dy: float = 0.0) -> None:
        """Centred text in local units."""
        self.cv.text(s, self.pt((0.0, dy)), width * self.u, height * self.u, self.pal[role])

    def arrow(self, pts: Sequence[Pt], role: str, w: float = 0.13, head: float = 0.26) -> None:
        """Stroke through pts ending in a filled triangular arrow head (length head) at the last point."""
        tip = pts[-1]
        shaft, left, base = list(pts[:-1]), head, pts[-1]
        while shaft:  # walk back from the tip along the path until the head's length is used up
            p = shaft[-1]
            d = math.hypot(base[0] - p[0], base[1] - p[1])
            if d >= left:
                base = (base[0] + (p[0] - base[0]) * left / d, base[1] + (p[1] - base[1]) * left / d)
                break
            left -= d
            base = shaft.pop()
        d = math.hypot(tip[0] - base[0], tip[1] - base[1]) or 1.0
        dx, dy = (tip[0] - base[0]) / d, (tip[1] - base[1]) / d
        if shaft:
            self.line([*shaft, (base[0] + dx * 0.02, base[1] + dy * 0.02)], role, w)
        hw = head * 0.8
        self.poly([tip, (base[0] - dy * hw, base[1] + dx * hw), (base[0] + dy * hw, base[1] - dx * hw)], role)


# ---------------------------------------------------------------------------------------------------
# Glyphs (local units; black on warning/prohibition signs, white on blue mandatory signs)
# ---------------------------------------------------------------------------------------------------
def _car(g: _Glyph, x: float, role: str, s: float = 1.0) -> None:
    """A car seen from behind (no-passing signs)."""
    g.poly(
        [(x - 0.085 * s, -0.15 * s), (x + 0.085 * s, -0.15 * s), (x + 0.12 * s, -0.02 * s), (x - 0.12 * s, -0.02 * s)],
        role,
    )
    g.rect(x - 0.135 * s, -0.03 * s, x + 0.135 * s, 0.13 * s, role)
    g.rect(x - 0.13 * s, 0.12 * s, x - 0.07 * s, 0.2 * s, role)
    g.rect(x + 0.07 * s, 0.12 * s, x + 0.13 * s, 0.2 * s, role)


def _truck_back(g: _Glyph, x: float, role: str) -> None:
    """A lorry seen from behind: taller and wider than a car."""
    g.rect(x - 0.15, -0.24, x + 0.15, 0.14, role)
    g.rect(x - 0.15, 0.13, x - 0.08, 0.21, role)
    g.rect(x + 0.08, 0.13, x + 0.15, 0.21, role)


def _truck_side(g: _Glyph, role: str) -> None:
    """A lorry in profile (vehicles over 3.5 t prohibited)."""
    g.rect(-0.36, -0.16, 0.12, 0.1, role)
    g.poly([(0.15, -0.06), (0.29, -0.06), (0.36, 0.02), (0.36, 0.1), (0.15, 0.1)], role)
    g.circle((-0.22, 0.12), 0.065, role)
    g.circle((0.24, 0.12), 0.065, role)


def _stripes(g: _Glyph, role: str, n: int = 5, gap: float = 0.075, w: float = 0.03) -> None:
    """Parallel diagonal strokes from upper right to lower left: the 'end of restriction' band."""
    for k in range(n):
        o = (k - (n - 1) / 2) * gap
        h = math.sqrt(max(0.0, 0.48**2 - o**2))
        cx, cy = o / math.sqrt(2), o / math.sqrt(2)
        d = h / math.sqrt(2)
        g.line([(cx + d, cy - d), (cx - d, cy + d)], role, w)


def _person(g: _Glyph, x: float, y: float, s: float, role: str) -> None:
    """A walking stick figure."""
    g.circle((x + 0.02 * s, y - 0.29 * s), 0.065 * s, role)
    g.line([(x + 0.01 * s, y - 0.2 * s), (x - 0.02 * s, y + 0.05 * s)], role, 0.085 * s)
    g.line([(x - 0.15 * s, y + 0.33 * s), (x - 0.02 * s, y + 0.04 * s), (x + 0.11 * s, y + 0.33 * s)], role, 0.07 * s)
    g.line([(x - 0.13 * s, y + 0.02 * s), (x + 0.0 * s, y - 0.15 * s), (x + 0.13 * s, y - 0.01 * s)], role, 0.055 * s)


def _speed(text: str) -> Callable[[_Glyph], None]:
    """Speed-limit number."""
    return lambda g: g.text(text, "black", 0.78 if len(text) > 2 else 0.62, 0.5)


def _g_end80(g: _Glyph) -> None:
    g.text("80", "grey", 0.62, 0.5)
    _stripes(g, "black", n=4, gap=0.06, w=0.028)


def _g_no_passing(g: _Glyph) -> None:
    _car(g, -0.17, "red")
    _car(g, 0.17, "black")


def _g_no_passing_trucks(g: _Glyph) -> None:
    _truck_back(g, -0.17, "red")
    _car(g, 0.18, "black")


def _g_right_of_way(g: _Glyph) -> None:
    g.poly([(-0.04, -0.34), (0.04, -0.34), (0.07, 0.3), (-0.07, 0.3)], "black")
    g.rect(-0.24, -0.05, 0.24, 0.02, "black")


def _g_stop(g: _Glyph) -> None:
    g.text("STOP", "white", 0.82, 0.4)


def _g_truck(g: _Glyph) -> None:
    _truck_side(g, "black")


def _g_no_entry(g: _Glyph) -> None:
    g.rect(-0.36, -0.085, 0.36, 0.085, "white")


def _g_caution(g: _Glyph) -> None:
    g.poly([(-0.055, -0.32), (0.055, -0.32), (0.03, 0.12), (-0.03, 0.12)], "black")
    g.circle((0.0, 0.24), 0.06, "black")


def _g_curve(g: _Glyph) -> None:
    g.arrow([(0.1, 0.34), (0.1, 0.06), (0.06, -0.06), (-0.02, -0.15), (-0.22, -0.26)], "black", 0.1, 0.2)


def _g_double_curve(g: _Glyph) -> None:
    g.arrow(
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


def _g_bumpy(g: _Glyph) -> None:
    xs = np.linspace(-0.36, 0.36, 25)
    top = [(float(x), 0.2 - 0.22 * math.sin(math.pi * (x + 0.36) / 0.36) ** 2) for x in xs]
    g.poly([*top, (0.36, 0.3), (-0.36, 0.3)], "black")


def _g_slippery(g: _Glyph) -> None:
    _car(g, 0.0, "black", 0.9)
    for x0 in (-0.12, 0.12):
        g.line([(x0 + 0.05 * math.sin(t * 2 * math.pi), 0.22 + t * 0.14) for t in np.linspace(0, 1, 9)], "black", 0.04)


def _g_narrows(g: _Glyph) -> None:
    g.line([(-0.14, 0.34), (-0.14, -0.34)], "black", 0.08)
    g.line([(0.16, 0.34), (0.16, 0.06), (0.04, -0.1), (0.04, -0.34)], "black", 0.08)


def _g_road_work(g: _Glyph) -> None:
    g.circle((0.08, -0.27), 0.065, "black")
    g.line([(0.06, -0.18), (-0.04, 0.06)], "black", 0.09)
    g.line([(-0.16, 0.32), (-0.04, 0.05), (0.06, 0.32)], "black", 0.07)
    g.line([(0.03, -0.12), (0.2, 0.02), (0.3, 0.22)], "black", 0.045)
    g.poly([(-0.38, 0.32), (-0.27, 0.16), (-0.17, 0.32)], "black")


def _g_signals(g: _Glyph) -> None:
    g.rect(-0.11, -0.36, 0.11, 0.33, "black")
    for y, role in ((-0.23, "red"), (-0.015, "yellow"), (0.2, "green")):
        g.circle((0.0, y), 0.075, role)


def _g_pedestrian(g: _Glyph) -> None:
    _person(g, 0.0, 0.0, 1.0, "black")


def _g_children(g: _Glyph) -> None:
    _person(g, -0.13, -0.02, 0.95, "black")
    _person(g, 0.16, 0.06, 0.72, "black")


def _g_bicycle(g: _Glyph) -> None:
    for x in (-0.2, 0.2):
        g.circle((x, 0.14), 0.13, "black", 0.04)
    g.line([(-0.2, 0.14), (-0.04, -0.06), (0.2, 0.14)], "black", 0.045)
    g.line([(-0.04, -0.06), (0.13, -0.06), (0.2, 0.14)], "black", 0.045)
    g.line([(0.13, -0.06), (0.1, -0.16), (0.18, -0.17)], "black", 0.04)
    g.circle((-0.07, -0.25), 0.055, "black")
    g.line([(-0.07, -0.19), (-0.04, -0.06)], "black", 0.06)


def _g_snow(g: _Glyph) -> None:
    for a in (90, 30, 150):
        ca, sa = math.cos(math.radians(a)), math.sin(math.radians(a))
        g.line([(-0.32 * ca, -0.32 * sa), (0.32 * ca, 0.32 * sa)], "black", 0.05)
        for sgn in (-1, 1):
            tx, ty = sgn * 0.2 * ca, sgn * 0.2 * sa
            for b in (-40, 40):
                cb, sb = math.cos(math.radians(a + b)), math.sin(math.radians(a + b))
                g.line([(tx, ty), (tx + sgn * 0.1 * cb, ty + sgn * 0.1 * sb)], "black", 0.035)


def _g_deer(g: _Glyph) -> None:
    body = [
        (
            0.0 + 0.22 * math.cos(t) * math.cos(-0.35) - 0.08 * math.sin(t) * math.sin(-0.35),
            0.04 + 0.22 * math.cos(t) * math.sin(-0.35) + 0.08 * math.sin(t) * math.cos(-0.35),
        )
        for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)
    ]
    g.poly(body, "black")
    g.line([(0.15, -0.04), (0.24, -0.2)], "black", 0.07)
    g.poly([(0.2, -0.24), (0.3, -0.26), (0.36, -0.2), (0.26, -0.17)], "black")
    g.line([(0.22, -0.24), (0.18, -0.36), (0.12, -0.38)], "black", 0.03)
    g.line([(0.18, -0.32), (0.24, -0.38)], "black", 0.03)
    g.line([(-0.16, 0.1), (-0.3, 0.22), (-0.36, 0.32)], "black", 0.045)
    g.line([(-0.12, 0.12), (-0.2, 0.3)], "black", 0.045)
    g.line([(0.1, 0.0), (0.22, 0.12), (0.3, 0.1)], "black", 0.045)
    g.line([(0.08, 0.04), (0.12, 0.24)], "black", 0.045)


def _g_end_all(g: _Glyph) -> None:
    _stripes(g, "black", n=5, gap=0.07, w=0.03)


def _g_turn(g: _Glyph) -> None:
    g.arrow([(-0.13, 0.36), *_arc((0.07, 0.0), 0.2, 180, 270, 8), (0.34, -0.2)], "white", 0.13, 0.24)


def _g_ahead(g: _Glyph) -> None:
    g.arrow([(0.0, 0.38), (0.0, -0.38)], "white", 0.14, 0.3)


def _g_straight_or(g: _Glyph) -> None:
    g.arrow([(-0.1, 0.38), (-0.1, -0.38)], "white", 0.12, 0.24)
    g.arrow([*_arc((0.1, 0.1), 0.2, 180, 270, 8), (0.36, -0.1)], "white", 0.12, 0.22)


def _g_keep(g: _Glyph) -> None:
    g.arrow([(-0.27, -0.27), (0.28, 0.28)], "white", 0.14, 0.3)


def _g_roundabout(g: _Glyph) -> None:
    for k in range(3):
        a = -90 + 120 * k
        g.arrow(_arc((0.0, 0.0), 0.27, a, a - 85, 12), "white", 0.1, 0.16)


def _g_end_no_passing(g: _Glyph) -> None:
    _car(g, -0.17, "grey")
    _car(g, 0.17, "grey")
    _stripes(g, "black", n=4, gap=0.06, w=0.028)


def _g_end_no_passing_trucks(g: _Glyph) -> None:
    _truck_back(g, -0.17, "grey")
    _car(g, 0.18, "grey")
    _stripes(g, "black", n=4, gap=0.06, w=0.028)


def _none(g: _Glyph) -> None:
    return None


# ---------------------------------------------------------------------------------------------------
# Sign bodies: (shape, rim/fill style) -> draws the silhouette and returns the glyph area (centre, size)
# ---------------------------------------------------------------------------------------------------
_TRI_R = 0.98 / math.sqrt(3)  # circumradius of an equilateral triangle 0.98 wide


def _body(cv: _Canvas, style: str, pal: dict[str, Color]) -> tuple[Pt, float]:
    """Draw the sign body in one of the styles and return the glyph area's centre and size."""
    if style == "prohibition":  # red rim, white disc
        cv.circle((0.5, 0.5), 0.49, pal["red"], mask=True)
        cv.circle((0.5, 0.5), 0.39, pal["white"])
        return (0.5, 0.5), 0.74
    if style == "end":  # white disc, thin dark outline
        cv.circle((0.5, 0.5), 0.49, pal["white"], mask=True)
        cv.circle((0.5, 0.5), 0.475, pal["grey"], 0.02)
        return (0.5, 0.5), 0.8
    if style == "no_entry":  # red disc, thin white border
        cv.circle((0.5, 0.5), 0.49, pal["white"], mask=True)
        cv.circle((0.5, 0.5), 0.465, pal["red"])
        return (0.5, 0.5), 0.9
    if style == "mandatory":  # blue disc, thin white border
        cv.circle((0.5, 0.5), 0.49, pal["white"], mask=True)
        cv.circle((0.5, 0.5), 0.465, pal["blue"])
        return (0.5, 0.5), 0.8
    if style in ("warning", "yield"):  # red rim triangle, white inside (pointing up / down)
        up = style == "warning"
        c = (0.5, 0.5 + _TRI_R / 4) if up else (0.5, 0.5 - _TRI_R / 4)
        start = -90 if up else 90
        cv.poly(_regular(3, _TRI_R, start, c), pal["red"], mask=True)
        cv.poly(_regular(3, _TRI_R * 0.63, start, c), pal["white"])
        return (0.5, c[1] - 0.02), 0.46
    if style == "stop":  # red octagon, thin white border
        r = 0.49 / math.cos(math.pi / 8)
        cv.poly(_regular(8, r, 22.5), pal["white"], mask=True)
        cv.poly(_regular(8, r * 0.93, 22.5), pal["red"])
        return (0.5, 0.5), 0.9
    if style == "priority":  # white diamond, thin dark line, yellow centre
        cv.poly(_regular(4, 0.49, 0), pal["white"], mask=True)
        cv.poly(_regular(4, 0.36, 0), pal["black"])
        cv.poly(_regular(4, 0.33, 0), pal["yellow"])
        return (0.5, 0.5), 0.5
    raise ValueError(f"unknown sign style {style!r}")


#: class id -> (body style, glyph drawer, mirrored glyph). Ids follow the real GTSRB classes.
_DESIGNS: tuple[tuple[str, Callable[[_Glyph], None], bool], ...] = (
    ("prohibition", _speed("20"), False),
    ("prohibition", _speed("30"), False),
    ("prohibition", _speed("50"), False),
    ("prohibition", _speed("60"), False),
    ("prohibition", _speed("70"), False),
    ("prohibition", _speed("80"), False),
    ("end", _g_end80, False),
    ("prohibition", _speed("100"), False),
    ("prohibition", _speed("120"), False),
    ("prohibition", _g_no_passing, False),
    ("prohibition", _g_no_passing_trucks, False),
    ("warning", _g_right_of_way, False),
    ("priority", _none, False),
    ("yield", _none, False),
    ("stop", _g_stop, False),
    ("prohibition", _none, False),
    ("prohibition", _g_truck, False),
    ("no_entry", _g_no_entry, False),
    ("warning", _g_caution, False),
    ("warning", _g_curve, False),
    ("warning", _g_curve, True),
    ("warning", _g_double_curve, False),
    ("warning", _g_bumpy, False),
    ("warning", _g_slippery, False),
    ("warning", _g_narrows, False),
    ("warning", _g_road_work, False),
    ("warning", _g_signals, False),
    ("warning", _g_pedestrian, False),
    ("warning", _g_children, False),
    ("warning", _g_bicycle, False),
    ("warning", _g_snow, False),
    ("warning", _g_deer, False),
    ("end", _g_end_all, False),
    ("mandatory", _g_turn, False),
    ("mandatory", _g_turn, True),
    ("mandatory", _g_ahead, False),
    ("mandatory", _g_straight_or, False),
    ("mandatory", _g_straight_or, True),
    ("mandatory", _g_keep, False),
    ("mandatory", _g_keep, True),
    ("mandatory", _g_roundabout, False),
    ("end", _g_end_no_passing, False),
    ("end", _g_end_no_passing_trucks, False),
)
assert len(_DESIGNS) == NUM_CLASSES == len(CLASS_NAMES)


# ---------------------------------------------------------------------------------------------------
# Per-track appearance and per-frame rendering
# ---------------------------------------------------------------------------------------------------
def _palette(rng: np.random.Generator) -> dict[str, Color]:
    """Paint colours of one physical sign: hue jitter plus fading towards grey (sun-bleached signs)."""
    n = rng.normal
    white = rng.uniform(205, 250)
    raw = {
        "red": (200 + n(0, 18), 28 + n(0, 12), 38 + n(0, 12)),
        "blue": (25 + n(0, 10), 80 + n(0, 18), 175 + n(0, 20)),
        "white": (white + n(0, 5), white + n(0, 5), white + n(0, 5)),
        "black": (rng.uniform(10, 45),) * 3,
        "grey": (rng.uniform(95, 150),) * 3,
        "yellow": (238 + n(0, 10), 190 + n(0, 18), 25 + n(0, 12)),
        "green": (30 + n(0, 10), 170 + n(0, 18), 70 + n(0, 12)),
    }
    fade = rng.uniform(0.0, 0.3) ** 1.5
    return {k: tuple(int(min(255.0, max(0.0, v * (1 - fade) + 150 * fade))) for v in rgb) for k, rgb in raw.items()}


def _template(class_id: int, rng: np.random.Generator) -> np.ndarray:
    """One physical sign as a premultiplied RGBA float32 template (T x T x 4) with a lighting gradient.

    Drawn at _S px with anti-aliasing, then reduced to _T px (just above the largest sign) once per track,
    so that per-frame resizing stays cheap.
    """
    cv = _Canvas()
    pal = _palette(rng)
    style, glyph, mirror = _DESIGNS[class_id]
    centre, size = _body(cv, style, pal)
    glyph(_Glyph(cv, centre, size, pal, mirror))
    rgba = cv2.resize(np.dstack([cv.img, cv.mask]), (_T, _T), interpolation=cv2.INTER_AREA).astype(np.float32)
    ramp = np.linspace(-0.5, 0.5, _T, dtype=np.float32)
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    rgba[..., :3] *= (1.0 + gx * ramp[None, :] + gy * ramp[:, None])[..., None]
    rgba[..., 3] *= 1.0 / 255.0
    return rgba


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A muted scene colour (sky, foliage, buildings, tarmac)."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 140), rng.uniform(30, 230)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """One track's scene behind the sign: a colour gradient, smooth blotches, or clutter (float32 RGB)."""
    kind = rng.integers(3)
    t = np.linspace(0.0, 1.0, _BG, dtype=np.float32)
    a = rng.uniform(0, 2 * math.pi)
    w = math.cos(a) * t[None, :] + math.sin(a) * t[:, None]
    w = (w - w.min()) / (w.max() - w.min() + 1e-6)
    c0, c1 = _random_colour(rng), _random_colour(rng)
    bg = c0 * (1 - w[..., None]) + c1 * w[..., None]
    if kind == 1:  # smooth blotches (foliage / clouds)
        k = int(rng.integers(3, 8))
        coarse = np.stack([_random_colour(rng) for _ in range(k * k)]).reshape(k, k, 3)
        bg = 0.3 * bg + 0.7 * cv2.resize(coarse, (_BG, _BG), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:  # clutter: buildings, poles, other objects
        for _ in range(int(rng.integers(4, 12))):
            col = tuple(float(v) for v in _random_colour(rng))
            x0, y0 = (int(v) for v in rng.integers(0, _BG, 2))
            shape = rng.integers(3)
            if shape == 0:
                x1, y1 = (int(v) for v in rng.integers(0, _BG, 2))
                cv2.rectangle(bg, (x0, y0), (x1, y1), col, -1)
            elif shape == 1:
                cv2.circle(bg, (x0, y0), int(rng.integers(4, 25)), col, -1, _AA)
            else:
                x1, y1 = (int(v) for v in rng.integers(0, _BG, 2))
                cv2.line(bg, (x0, y0), (x1, y1), col, int(rng.integers(1, 6)), _AA)
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.4:  # the sign's pole
        col = tuple(float(v) for v in rng.uniform(90, 170) * np.ones(3))
        x = int(_BG // 2 + rng.integers(-4, 5))
        cv2.rectangle(bg, (x - 3, _BG // 2), (x + 3, _BG), col, -1)
    return np.clip(bg, 0, 255).astype(np.float32)


def _render_track(rng: np.random.Generator, class_id: int, sizes: Sequence[float]) -> list[tuple[np.ndarray, tuple]]:
    """Frames of one physical sign at the given sign sizes: [(uint8 RGB image, (x1, y1, x2, y2))]."""
    tpl = _template(class_id, rng)
    bg = _background(rng)
    ratio_w, ratio_h = rng.uniform(1.12, 1.35, 2)
    rot0 = rng.uniform(-8, 8)
    squash = rng.uniform(0.82, 1.0)  # viewing angle: sign narrower than tall
    pos0 = rng.uniform(-0.7, 0.7, 2)
    bg_centre = rng.uniform(0.35, 0.65, 2)
    gain0 = math.exp(rng.uniform(math.log(0.45), math.log(1.35)))
    contrast0 = rng.uniform(0.6, 1.15)
    bias0 = rng.uniform(-15, 15)
    blur0 = rng.uniform(0.0, 1.0)
    noise0 = rng.uniform(1.0, 8.0)
    frames = []
    for s in sizes:
        n = max(4, round(s))
        w = min(_MAX_IMG, max(_MIN_IMG, round(n * ratio_w)))
        h = min(_MAX_IMG, max(_MIN_IMG, round(n * ratio_h)))
        # Background: the part of the scene around the sign, zooming in as we approach.
        frac = min(1.0, max(0.35, 0.75 * sizes[0] / s))
        cw, ch = max(8, round(_BG * frac * w / max(w, h))), max(8, round(_BG * frac * h / max(w, h)))
        x0 = min(_BG - cw, max(0, round(bg_centre[0] * _BG - cw / 2)))
        y0 = min(_BG - ch, max(0, round(bg_centre[1] * _BG - ch / 2)))
        img = cv2.resize(bg[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        # Sign: shrink the template, then rotate, squash and place it.
        small = cv2.resize(tpl, (n, n), interpolation=cv2.INTER_AREA)
        th = math.radians(rot0 + rng.uniform(-2, 2))
        ct, st = math.cos(th), math.sin(th)
        a = np.array([[ct * squash, -st], [st * squash, ct]])
        ext_x, ext_y = n * (squash * abs(ct) + abs(st)), n * (squash * abs(st) + abs(ct))
        pos = np.clip(pos0 + rng.uniform(-0.15, 0.15, 2), -1, 1)
        cx = (w - 1) / 2 + pos[0] * max(0.0, (w - ext_x) / 2) * 0.9
        cy = (h - 1) / 2 + pos[1] * max(0.0, (h - ext_y) / 2) * 0.9
        m = np.hstack([a, np.array([[cx], [cy]]) - a @ np.array([[(n - 1) / 2], [(n - 1) / 2]])])
        warped = cv2.warpAffine(
            small, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)
        )
        alpha = warped[..., 3:4]
        img = warped[..., :3] + img * (1.0 - alpha)
        # Camera: exposure, contrast, blur, sensor noise.
        img = img * (gain0 * rng.uniform(0.93, 1.07))
        mean = float(img.mean())
        img = (img - mean) * (contrast0 * rng.uniform(0.95, 1.05)) + mean + bias0
        sigma = blur0 + rng.uniform(-0.2, 0.4)
        if sigma > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        img = img + rng.normal(0.0, noise0, img.shape).astype(np.float32)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        ys, xs = np.nonzero(alpha[..., 0] > 0.5)
        roi = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        frames.append((img, roi))
    return frames


def _write_image(path: Path, rgb: np.ndarray) -> None:
    """Binary PPM (P6), 8-bit RGB on disk (cv2 takes BGR)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PXM_BINARY, 1]):
        raise OSError(f"cv2 could not write {path}")


def _write_csv(path: Path, rows: list[tuple]) -> None:
    """Semicolon-separated annotation file in the official GTSRB format."""
    lines = [CSV_HEADER] + [";".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _build(out: Path, params: dict[str, int]) -> dict[str, int]:
    """Write the whole GTSRB/ tree under out; returns image counts."""
    seed, tracks, frames = params["seed"], params["train_tracks_per_class"], params["frames_per_track"]
    train_dir = out / "GTSRB" / "Final_Training" / "Images"
    n_train = 0
    for c in range(NUM_CLASSES):
        d = train_dir / f"{c:05d}"
        d.mkdir(parents=True)
        rows = []
        for t in range(tracks):
            rng = np.random.default_rng([seed, 0, c, t])
            s0 = rng.uniform(_MIN_SIGN, 45)
            s1 = min(_MAX_SIGN, s0 * rng.uniform(1.3, 2.2))
            sizes = list(np.linspace(s0, s1, frames)) if frames > 1 else [rng.uniform(_MIN_SIGN, _MAX_SIGN)]
            for f, (img, roi) in enumerate(_render_track(rng, c, sizes)):
                name = f"{t:05d}_{f:05d}.ppm"
                _write_image(d / name, img)
                rows.append((name, img.shape[1], img.shape[0], *roi, c))
                n_train += 1
        _write_csv(d / f"GT-{c:05d}.csv", rows)
    # Test: every image is an independent sign; classes shuffled, files numbered in order.
    samples = []
    for c in range(NUM_CLASSES):
        for k in range(params["test_per_class"]):
            rng = np.random.default_rng([seed, 1, c, k])
            samples.append((c, *_render_track(rng, c, [rng.uniform(_MIN_SIGN, _MAX_SIGN)])[0]))
    order = np.random.default_rng([seed, 2]).permutation(len(samples))
    test_dir = out / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = []
    for i, j in enumerate(order):
        c, img, roi = samples[int(j)]
        name = f"{i:05d}.ppm"
        _write_image(test_dir / name, img)
        rows.append((name, img.shape[1], img.shape[0], *roi, c))
    _write_csv(test_dir / "GT-final_test.csv", rows)
    return {"train": n_train, "test": len(rows)}


# ---------------------------------------------------------------------------------------------------
# Caching and atomic installation
# ---------------------------------------------------------------------------------------------------
def _read_marker(root: Path) -> dict | None:
    """The completion marker's content, or None if absent or unreadable."""
    try:
        data = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    """True when root holds a finished tree generated with exactly these parameters by this format."""
    marker = _read_marker(root)
    return (
        marker is not None
        and marker.get("format_version") == FORMAT_VERSION
        and marker.get("params") == params
        and (root / "GTSRB").is_dir()
    )


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything that this generator did not make (never delete a user's data)."""
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir() or root.is_symlink():
        raise FileExistsError(f"{root} exists and is not a directory; pick another root for synthetic data.")
    if (root / MARKER_NAME).is_file() or not any(root.iterdir()):
        return
    raise FileExistsError(
        f"{root} is not empty and was not produced by the synthetic generator (no {MARKER_NAME}); "
        "refusing to replace it. Pick another root, or delete the folder yourself."
    )


def _cleanup_stale(root: Path) -> None:
    """Remove leftovers of killed runs next to root: replaced old trees, and temp trees older than an hour."""
    prefix = glob.escape(f".{root.name}")
    for p in root.parent.glob(prefix + ".old-*"):
        shutil.rmtree(p, ignore_errors=True)
    now = time.time()
    for p in root.parent.glob(prefix + ".tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _install(tmp: Path, root: Path, params: dict[str, int], overwrite: bool = False) -> bool:
    """Rename the finished tmp tree to root atomically; False (tmp untouched) if another process won."""
    last: OSError | None = None
    for _ in range(10):
        try:
            os.replace(tmp, root)  # atomic; succeeds when root is absent (or an empty folder on POSIX)
            return True
        except OSError as e:
            last = e
            if not root.exists():
                continue
        if not overwrite and _is_complete(root, params):
            return False  # a concurrent run finished first with the same parameters
        _check_replaceable(root)
        trash = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(root, trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not move the generated data into {root}: {last}")


def generate(
    root: str | Path,
    train_tracks_per_class: int = 6,
    frames_per_track: int = 5,
    test_per_class: int = 5,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) a synthetic GTSRB tree under root and return root; cached by the marker file.

    The tree is built in a temporary sibling folder, the marker written last, and the folder renamed into
    place, so an interrupted run never leaves a tree that looks complete. overwrite=True regenerates even
    when a matching tree exists. A non-empty root that this function did not create is never replaced.
    """
    params = {
        "train_tracks_per_class": int(train_tracks_per_class),
        "frames_per_track": int(frames_per_track),
        "test_per_class": int(test_per_class),
        "seed": int(seed),
    }
    for k, v in params.items():
        if v < (0 if k == "seed" else 1):
            raise ValueError(f"{k}={v} must be {'0' if k == 'seed' else '1'} or more.")
    root = Path(root).expanduser().absolute()
    if not overwrite and _is_complete(root, params):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = _build(tmp, params)
        os.chmod(tmp, (tmp / "GTSRB").stat().st_mode & 0o777)  # mkdtemp makes 0700; use the umask default
        marker = {"format_version": FORMAT_VERSION, "generator": __name__, "params": params, "counts": counts}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _install(tmp, root, params, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# ---------------------------------------------------------------------------------------------------
# Preview and command line
# ---------------------------------------------------------------------------------------------------
def make_preview(root: str | Path, out_png: str | Path, tile: int = 80) -> Path:
    """Save a grid with one training image per class (the last frame of track 0) to eyeball the designs."""
    images = Path(root) / "GTSRB" / "Final_Training" / "Images"
    cols, rows = 9, math.ceil(NUM_CLASSES / 9)
    grid = np.full((rows * (tile + 14), cols * tile, 3), 255, np.uint8)
    for c in range(NUM_CLASSES):
        files = sorted((images / f"{c:05d}").glob("00000_*.ppm"))
        if not files:
            continue
        img = cv2.resize(
            cv2.imread(str(files[-1]), cv2.IMREAD_COLOR), (tile - 4, tile - 4), interpolation=cv2.INTER_NEAREST
        )
        y, x = (c // cols) * (tile + 14), (c % cols) * tile
        grid[y + 2 : y + tile - 2, x + 2 : x + tile - 2] = img
        cv2.putText(grid, str(c), (x + 4, y + tile + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, _AA)
    out = Path(out_png)
    if not cv2.imwrite(str(out), grid):
        raise OSError(f"cv2 could not write {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m alexnet_gtsrb.data.synthetic --root DIR [--tracks N --frames N --test N --seed N]."""
    p = argparse.ArgumentParser(
        prog="python -m alexnet_gtsrb.data.synthetic",
        description="Generate a small synthetic GTSRB look-alike in the official archive layout (offline demo).",
    )
    p.add_argument("--root", type=Path, default=None, help=f"output folder (default: {default_synthetic_root()})")
    p.add_argument("--tracks", type=int, default=6, help="training tracks per class (default 6)")
    p.add_argument("--frames", type=int, default=5, help="frames per training track (default 5)")
    p.add_argument("--test", type=int, default=5, help="test images per class (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="regenerate even if a matching tree exists")
    p.add_argument("--preview", type=Path, default=None, help="also save a PNG grid with one image per class")
    a = p.parse_args(argv)
    root = a.root if a.root is not None else default_synthetic_root()
    t0 = time.perf_counter()
    try:
        root = generate(root, a.tracks, a.frames, a.test, a.seed, a.overwrite)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = (_read_marker(root) or {}).get("counts", {})
    print(
        f"synthetic GTSRB: {counts.get('train', '?')} train + {counts.get('test', '?')} test images, "
        f"{NUM_CLASSES} classes, in {root / 'GTSRB'} ({time.perf_counter() - t0:.1f} s)"
    )
    if a.preview is not None:
        print(f"preview: {make_preview(root, a.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

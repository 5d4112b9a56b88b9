"""Small inline-SVG line charts (sparklines) for the status page: points in, SVG text out.

Pure functions, no I/O and no third-party code: the page must render with no internet, so
charts are plain ``<svg>`` elements inside the HTML. NaN and infinite values break the line
(a gap, as Prometheus's graph shows a missing sample), they are never drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH = 240
HEIGHT = 48
PAD = 3.0


def line_segments(
    points: Sequence[tuple[float, float]], start: float, end: float,
    width: float = WIDTH, height: float = HEIGHT,
) -> tuple[list[list[tuple[float, float]]], tuple[float, float] | None]:
    """Map (time, value) points into SVG coordinates, split at non-finite values.

    Returns the segments (each a list of (x, y)) and the (low, high) of the finite values
    (None when there is none). Time runs ``start`` → ``end`` left to right; a flat series
    is drawn across the middle.
    """
    finite = [v for _, v in points if math.isfinite(v)]
    if not finite:
        return [], None
    low, high = min(finite), max(finite)
    span_t = max(end - start, 1e-9)
    inner_h = height - 2 * PAD

    def y_of(v: float) -> float:
        if high == low:
            return height / 2
        return PAD + inner_h * (1 - (v - low) / (high - low))

    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for t, v in points:
        if not math.isfinite(v):
            if current:
                segments.append(current)
            current = []
            continue
        x = PAD + (width - 2 * PAD) * min(1.0, max(0.0, (t - start) / span_t))
        current.append((round(x, 1), round(y_of(v), 1)))
    if current:
        segments.append(current)
    return segments, (low, high)


def sparkline_svg(
    points: Sequence[tuple[float, float]], start: float, end: float, label: str,
    width: int = WIDTH, height: int = HEIGHT,
) -> str:
    """An inline ``<svg>`` line chart of ``points`` over [start, end], titled ``label``.

    The chart scales to its container's width (``viewBox``); ``label`` is escaped. A series
    of one point draws a dot; an empty one says "no data".
    """
    segments, bounds = line_segments(points, start, end, width, height)
    title = escape(label)
    head = (f'<svg class="spark" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
            f'role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{title}</title>")
    if bounds is None:
        return (head + f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" '
                'class="nodata">no data</text></svg>')
    parts = [head]
    for seg in segments:
        if len(seg) == 1:
            x, y = seg[0]
            parts.append(f'<circle cx="{x}" cy="{y}" r="1.8"/>')
        else:
            coords = " ".join(f"{x},{y}" for x, y in seg)
            parts.append(f'<polyline points="{coords}" fill="none" '
                         'vector-effect="non-scaling-stroke"/>')
    parts.append("</svg>")
    return "".join(parts)

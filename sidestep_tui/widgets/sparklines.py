"""Text sparklines and gauges: the compact view's charts. Pure functions, no widget state.

A sparkline buckets ``values`` into ``width`` columns (mean per bucket) and draws each with one of
eight block heights; a gauge bar shows "n/a" when its reading is missing, never an empty bar that
looks like zero. Numbers are formatted by ``sidestep_tui.formatting`` (shared by every screen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..formatting import NA

BLOCKS = "▁▂▃▄▅▆▇█"


def bucket(values: Sequence[float], width: int) -> list[float]:
    """Means of ``width`` equal slices of the finite ``values`` (fewer values than width: as is)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if width <= 0 or not finite:
        return []
    if len(finite) <= width:
        # Stretch a short series over the width (each point repeated), so the line reads the same
        # at any length.
        n = len(finite)
        return [finite[i * n // width] for i in range(width)]
    out = []
    n = len(finite)
    for i in range(width):
        lo, hi = i * n // width, (i + 1) * n // width
        chunk = finite[lo : max(hi, lo + 1)]
        out.append(sum(chunk) / len(chunk))
    return out


def sparkline(values: Sequence[float], width: int, *, lo: float | None = None, hi: float | None = None) -> str:
    """One line of block characters, ``width`` wide at most."""
    points = bucket(values, width)
    if not points:
        return ""
    low = min(points) if lo is None else lo
    high = max(points) if hi is None else hi
    span = high - low
    if span <= 0:
        return BLOCKS[len(BLOCKS) // 2] * len(points)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[max(0, min(top, round((v - low) / span * top)))] for v in points)


def bar(fraction: float | None, width: int) -> str:
    """A gauge bar: ``█████░░░░░`` (eighths for the partial cell); ``n/a`` padded when unknown."""
    if width <= 0:
        return ""
    if fraction is None or not math.isfinite(fraction):
        return NA.center(width, "·")
    fraction = max(0.0, min(1.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    filled = "█" * full + partial.strip()
    return filled + "░" * (width - len(filled))

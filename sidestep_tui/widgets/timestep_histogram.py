"""Sampled timesteps against the expected logit-normal density.

Bars are the observed share of samples per bin (``recent`` since the last histogram, or
``cumulative``); ``─`` marks the sampler's expected share, so a skewed sampler shows at a glance. The
total-variation distance between the two is printed too (0 = identical, 1 = disjoint). Pure text
rendering: cheap enough to redraw on every monitor tick, and identical in snapshots.
"""

from __future__ import annotations

from textual.markup import escape
from textual.widgets import Static

from ..state import Histogram, expected_density_mass

EIGHTHS = " ▁▂▃▄▅▆▇█"


def _regroup(values: list[float], columns: int) -> list[float]:
    """Sum ``values`` into ``columns`` groups (or repeat each value when there is room)."""
    n = len(values)
    if n == 0 or columns <= 0:
        return []
    if columns >= n:
        # Each column shows its bin's value (bins get columns // n or one more); heights are
        # normalised afterwards, so observed and expected stay comparable.
        return [values[i * n // columns] for i in range(columns)]
    return [sum(values[i * n // columns : (i + 1) * n // columns]) for i in range(columns)]


def _markup_runs(cells: list[tuple[str, str]]) -> str:
    """One markup tag per run of equally styled cells (markup parsing costs per tag)."""
    out: list[str] = []
    i = 0
    while i < len(cells):
        style = cells[i][0]
        j = i
        while j < len(cells) and cells[j][0] == style:
            j += 1
        text = "".join(c for _s, c in cells[i:j])
        out.append(f"[{style}]{text}[/]" if style else text)
        i = j
    return "".join(out)


def tv_distance(observed: list[float], expected: list[float]) -> float:
    return 0.5 * sum(abs(o - e) for o, e in zip(observed, expected, strict=False))  # an event may carry fewer expected bins


def render_histogram(
    hist: Histogram | None,
    width: int,
    height: int,
    *,
    cumulative: bool = False,
    mu: float | None = None,
    sigma: float | None = None,
) -> str:
    """Textual markup, ``height`` lines: bars, an axis line and a legend line."""
    width = max(10, width)
    if hist is None or not hist.bin_edges:
        return escape("timestep histogram: waiting for the first one (every log_heavy_every steps)")
    counts = list(hist.cumulative if cumulative else hist.recent)
    total = sum(counts)
    observed = [c / total for c in counts] if total else [0.0] * len(counts)
    expected = expected_density_mass(hist)
    tv = tv_distance(observed, expected) if total else None
    obs_cols = _regroup(observed, width)
    exp_cols = _regroup(expected, width)
    cols = len(obs_cols)
    rows = max(1, height - 3)
    top = max(max(obs_cols, default=0), max(exp_cols, default=0)) or 1.0
    lines = []
    for r in range(rows - 1, -1, -1):
        cells: list[tuple[str, str]] = []  # (style, character)
        for o, e in zip(obs_cols, exp_cols, strict=False):  # no expected curve: bars only
            fill = o / top * rows - r  # how much of this row the bar covers
            if fill >= 1:
                cells.append(("$chart-recent", "█"))
            elif fill > 0:
                cells.append(("$chart-recent", EIGHTHS[max(1, round(fill * 8))]))
            elif e > 0 and int(min(rows - 1, e / top * rows)) == r:
                cells.append(("$chart-expected", "─"))
            else:
                cells.append(("", " "))
        lines.append(_markup_runs(cells))
    lo, hi = hist.bin_edges[0], hist.bin_edges[-1]
    axis = f"t={lo:g}".ljust(max(0, cols - len(f"{hi:g}"))) + f"{hi:g}"
    which = "cumulative" if cumulative else "recent"
    params = f" μ={mu:g} σ={sigma:g}" if mu is not None and sigma is not None else ""
    fit = f"  TV distance {tv:.3f}" if tv is not None else "  no samples yet"
    observed_line = "[$chart-recent]█[/] " + escape(f"{which}: {total} samples at step {hist.step}{fit}"[: width - 2])
    expected_line = "[$chart-expected]─[/] " + escape(f"expected logit-normal{params}"[: width - 2])
    return "\n".join([*lines, escape(axis[:width]), observed_line, expected_line])


class TimestepHistogram(Static):
    DEFAULT_CSS = """
    TimestepHistogram { height: 1fr; min-height: 5; padding: 0 1; }
    """

    cumulative = False
    _shown: tuple[object, ...] = ()

    def show(self, hist: Histogram | None, mu: float | None, sigma: float | None) -> None:
        width = self.content_region.width or max(10, self.size.width - 2)
        height = self.content_region.height or self.size.height or 8
        # A histogram arrives every log_heavy_every steps; the monitor asks twice a second.
        key = (hist, width, height, self.cumulative, mu, sigma)
        if key == self._shown:
            return
        self._shown = key
        # Its size comes from the layout (1fr), never from the text: no relayout.
        self.update(render_histogram(hist, width, height, cumulative=self.cumulative, mu=mu, sigma=sigma), layout=False)

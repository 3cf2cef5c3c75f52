"""The loss curve: raw (every StepMetrics summary) and smoothed (a switchable moving average).

A plotext redraw costs ~45 ms, so this widget never redraws by itself: the monitor calls
``set_history`` from its 1 Hz timer, and only when something changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from textual.color import Color
from textual_plotext import PlotextPlot

from ..state import MetricPoint, smooth

SMOOTHING_WINDOWS = (1, 5, 20, 50)
"""Moving-average windows (in StepMetrics points) the user cycles through; 1 = off."""


def chart_series(history: Sequence[MetricPoint], window: int) -> tuple[list[int], list[float], list[float]]:
    """(steps, raw losses, smoothed losses) with non-finite losses dropped."""
    points = [p for p in history if math.isfinite(p.loss)]
    steps = [p.step for p in points]
    raw = [p.loss for p in points]
    return steps, raw, smooth(raw, window)


def step_ticks(first: int, last: int, count: int = 6) -> list[int]:
    """At most ``count`` whole steps from ``first`` to ``last`` (steps are counted, never fractional)."""
    if last <= first:
        return [first]
    stride = max(1, math.ceil((last - first) / (count - 1)))
    ticks = list(range(first, last + 1, stride))
    if ticks[-1] != last:  # the newest step is always labelled (the tick before it goes when too close)
        ticks[-1 if last - ticks[-1] < stride / 2 else len(ticks) :] = [last]
    return ticks


class LossChart(PlotextPlot):
    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 8; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.window = SMOOTHING_WINDOWS[1]
        self._history: Sequence[MetricPoint] = ()

    def _rgb(self, name: str) -> tuple[int, int, int]:
        app = self.app
        value = app.theme_variables.get(name) or app.get_theme_variable_defaults().get(name, "#888888")
        return Color.parse(value).rgb

    def set_history(self, history: Sequence[MetricPoint], window: int | None = None) -> None:
        if window is not None:
            self.window = window
        self._history = history
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        steps, raw, smoothed = chart_series(history, self.window)
        label = "loss (raw)" if self.window <= 1 else f"loss (raw, smoothed over {self.window})"
        plt.title(label)
        plt.xlabel("step")
        if steps:
            plt.plot(steps, raw, marker="braille", color=self._rgb("chart-raw"))
            ticks = step_ticks(steps[0], steps[-1])
            plt.xticks([float(t) for t in ticks], [str(t) for t in ticks])
            if self.window > 1:
                plt.plot(steps, smoothed, marker="braille", color=self._rgb("chart-smooth"))
        self.refresh()

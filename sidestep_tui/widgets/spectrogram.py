"""A sample's mel spectrogram in the terminal, with its duration and loudness beside it.

Time runs left to right, frequency bottom (0 Hz) to top (Nyquist). In colour each cell is a half block
``▀``: its foreground is the upper of two mel rows, its background the lower, so a cell holds two rows of
the picture; the dB scale runs from black through purple and red to pale yellow over ``RANGE_DB`` below the
sample's loudest cell. Without colour (NO_COLOR, or a terminal of 16 colours or fewer) each cell is one
shade of `` ░▒▓█`` instead. The numbers come from the sample's JSON sidecar (``engine.samples_index``);
nothing here reads audio. Pure text rendering, sized to the widget.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from engine.samples_index import Sample, Spectrogram

RANGE_DB = 80
INFO_WIDTH = 24
SHADES = " ░▒▓█"
NO_SPECTROGRAM = "no spectrogram (rendered by an older version)"
# A magma-like ramp: (position 0..1, RGB); dark = quiet, pale = loud.
RAMP = (
    (0.0, (0, 0, 4)),
    (0.25, (59, 15, 112)),
    (0.5, (140, 41, 129)),
    (0.75, (222, 73, 104)),
    (0.9, (254, 159, 109)),
    (1.0, (252, 253, 191)),
)
LEVELS = 32  # colour steps: few distinct styles keep the text cheap


def ramp_colour(t: float) -> str:
    t = min(1.0, max(0.0, t))
    for (p0, c0), (p1, c1) in itertools.pairwise(RAMP):
        if t <= p1:
            f = (t - p0) / (p1 - p0)
            r, g, b = (round(a + (b_ - a) * f) for a, b_ in zip(c0, c1, strict=True))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#{:02x}{:02x}{:02x}".format(*RAMP[-1][1])


def _mean(group: list[float]) -> float:
    return sum(group) / len(group)


def _resample(values: list[float], n: int, pool: Callable[[list[float]], float] = _mean) -> list[float]:
    """``values`` to ``n`` points: ``pool`` (the mean) of each group, or repeated values when there is room."""
    m = len(values)
    if n <= 0 or m == 0:
        return []
    if n >= m:
        return [values[i * m // n] for i in range(n)]
    out = []
    for i in range(n):
        group = values[i * m // n : (i + 1) * m // n]
        out.append(pool(group))
    return out


def grid(spec: Spectrogram, width: int, rows: int) -> list[list[float]]:
    """[rows][width] dB values, row 0 the highest frequencies (the picture as drawn). Time is averaged, bands
    pooled by their loudest (a tone in one band of a merged row still shows)."""
    by_band = [_resample([float(v) for v in band], width) for band in spec.db]  # [bands][width]
    columns = [_resample([by_band[b][c] for b in range(len(by_band))], rows, max) for c in range(width)]  # low -> high
    return [[columns[c][rows - 1 - r] for c in range(width)] for r in range(rows)]


def _hz(value: float) -> str:
    return f"{value / 1000:.1f} kHz" if value >= 1000 else f"{value:.0f} Hz"


def info_lines(sample: Sample) -> list[str]:
    """The column beside the picture: which sample, how long, how loud."""
    who = "base model" if sample.is_base else f"step {sample.step}"
    seed = "" if sample.seed is None else f" · seed {sample.seed}"
    duration = "length n/a" if sample.duration_s is None else f"{sample.duration_s:.1f} s"
    lufs = "loudness n/a" if sample.lufs is None else f"{sample.lufs:.1f} LUFS"
    return [who + seed, f"{duration} · {lufs}"]


def render_spectrogram(sample: Sample | None, width: int, height: int, *, colour: bool) -> Text:
    """``height`` lines of at most ``width`` cells: the picture, then the info column on its right."""
    if sample is None or width <= 0 or height <= 0:
        return Text("")
    spec = sample.spectrogram
    info = info_lines(sample)
    if spec is None or spec.columns == 0:
        return Text("\n".join([NO_SPECTROGRAM, " · ".join(info)][:height]), no_wrap=True, overflow="ellipsis")
    pic_width = max(4, width - INFO_WIDTH - 1) if width > INFO_WIDTH + 12 else width
    values = [v for band in spec.db for v in band]
    top = max(values)
    bottom = top - RANGE_DB
    legend_cells = 8
    top_hz = spec.band_hz[-1] if spec.band_hz else 0
    side = [f"▲ {_hz(top_hz)}", *info]
    if height >= len(side) + 2:  # the legend only where the frequency ends and the figures still fit
        side.append(f"{top} {'#' * legend_cells} {bottom} dB")
    side += [""] * max(0, height - len(side) - 1) + ["▼ 0 Hz"]
    if len(side) > height:  # 1 to 3 lines: the figures first
        side = info[:height]

    def level(v: float) -> float:
        return min(1.0, max(0.0, (v - bottom) / RANGE_DB))

    styles: dict[tuple[int, int], Style] = {}

    def style(upper: float, lower: float) -> Style:
        key = (round(level(upper) * (LEVELS - 1)), round(level(lower) * (LEVELS - 1)))
        if key not in styles:
            styles[key] = Style(color=ramp_colour(key[0] / (LEVELS - 1)), bgcolor=ramp_colour(key[1] / (LEVELS - 1)))
        return styles[key]

    def shade(v: float) -> str:
        return SHADES[min(len(SHADES) - 1, int(level(v) * len(SHADES)))]

    text = Text(no_wrap=True, overflow="crop")
    pixels = grid(spec, pic_width, height * 2) if colour else grid(spec, pic_width, height)
    for r in range(height):
        if r:
            text.append("\n")
        if colour:
            for upper, lower in zip(pixels[2 * r], pixels[2 * r + 1], strict=True):
                text.append("▀", style(upper, lower))
        else:
            text.append("".join(shade(v) for v in pixels[r]))
        if pic_width < width and r < len(side):
            line = side[r]
            if "#" in line:  # the legend: the ramp itself between the two ends
                head, _, tail = line.partition("#" * legend_cells)
                text.append(" " + head)
                for i in range(legend_cells):
                    t = 1.0 - i / (legend_cells - 1)
                    if colour:
                        text.append("█", Style(color=ramp_colour(t)))
                    else:
                        text.append(SHADES[min(len(SHADES) - 1, int(t * len(SHADES)))])
                text.append(tail)
            else:
                text.append(" " + line)
    return text


class SpectrogramView(Widget):
    """The highlighted sample's spectrogram; set ``sample`` to show another (None: blank)."""

    DEFAULT_CSS = """
    SpectrogramView { height: 8; }
    """

    sample: reactive[Sample | None] = reactive(None)

    def colour(self) -> bool:
        """Colour cells only where colours can tell dB apart: not with NO_COLOR, not in 16 colours or fewer."""
        return not self.app.no_color and self.app.console.color_system in ("256", "truecolor")

    def render(self) -> Text:
        size = self.content_size
        return render_spectrogram(self.sample, size.width, size.height, colour=self.colour())

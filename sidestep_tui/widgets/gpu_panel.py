"""GPU memory and device readings with a little history.

Engine-side torch numbers (allocated / reserved / peak) and NVML numbers (used / total, utilisation,
temperature, power) come from ``ResourceSample``; anything the engine could not read is ``n/a``
(no GPU, no NVML): never a zero that looks like a reading.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.markup import escape
from textual.widgets import Static

from ..formatting import NA, human_size
from ..state import ResourcePoint
from .sparklines import bar, sparkline


def _frac(value: float | None, total: float | None) -> float | None:
    if value is None or not total:
        return None
    return value / total


def render_gpu(points: Sequence[ResourcePoint], width: int, *, compact: bool, device: str = "") -> str:
    width = max(20, width)
    if not points:
        return escape("resources: waiting for the first sample (every ~2 s)")
    p = points[-1]
    total = p.gpu_total_mb
    if compact:
        parts = [
            f"alloc {fmt_mb(p.allocated_mb)}",
            f"res {fmt_mb(p.reserved_mb)}",
            f"peak {fmt_mb(p.peak_allocated_mb)}",
            f"│ GPU {fmt_mb(p.gpu_used_mb)}/{fmt_mb(total)}",
            _pct(p.gpu_util_pct),
            _unit(p.gpu_temp_c, "°C"),
            _unit(p.gpu_power_w, "W"),
        ]
        if p.gpu_total_mb is None and p.allocated_mb is None:
            parts = [f"device {device or 'cpu'}: GPU memory n/a (no CUDA / NVML)", f"engine RSS {fmt_mb(p.process_rss_mb)}"]
        return escape(_fit("  ".join(parts), width))
    label_w = 10
    value_w = 20
    bar_w = max(6, width - label_w - value_w - 2)

    def row(label: str, value: float | None, of: float | None, text: str) -> str:
        return escape(label.ljust(label_w)) + f"[$primary]{bar(_frac(value, of), bar_w)}[/] " + escape(text.rjust(value_w))

    mem_total = total
    lines = [
        row("allocated", p.allocated_mb, mem_total, f"{fmt_mb(p.allocated_mb)} / {fmt_mb(mem_total)}"),
        row("reserved", p.reserved_mb, mem_total, fmt_mb(p.reserved_mb)),
        row("peak", p.peak_allocated_mb, mem_total, fmt_mb(p.peak_allocated_mb)),
        row("GPU used", p.gpu_used_mb, total, f"{fmt_mb(p.gpu_used_mb)} / {fmt_mb(total)}"),
        row("util", p.gpu_util_pct, 100.0, _pct(p.gpu_util_pct)),
        escape(f"temp {_unit(p.gpu_temp_c, ' °C')}   power {_unit(p.gpu_power_w, ' W')}   engine RSS {fmt_mb(p.process_rss_mb)}"),
    ]
    spark_w = max(4, width - label_w)
    used = [q.gpu_used_mb for q in points if q.gpu_used_mb is not None]
    util = [q.gpu_util_pct for q in points if q.gpu_util_pct is not None]
    alloc = [q.allocated_mb for q in points if q.allocated_mb is not None]
    rss = [q.process_rss_mb for q in points if q.process_rss_mb is not None]
    if used:
        lines.append(escape("used hist".ljust(label_w)) + f"[$accent]{sparkline(used, spark_w, lo=0, hi=total)}[/]")
    elif alloc:
        lines.append(escape("alloc hist".ljust(label_w)) + f"[$accent]{sparkline(alloc, spark_w, lo=0)}[/]")
    elif rss:
        lines.append(escape("RSS hist".ljust(label_w)) + f"[$accent]{sparkline(rss, spark_w, lo=0)}[/]")
    if util:
        lines.append(escape("util hist".ljust(label_w)) + f"[$accent]{sparkline(util, spark_w, lo=0, hi=100)}[/]")
    return "\n".join(lines)


def fmt_mb(mb: float | None) -> str:
    return human_size(None if mb is None else mb * 2**20)


def _pct(v: float | None) -> str:
    return NA if v is None else f"{v:.0f}%"


def _unit(v: float | None, unit: str) -> str:
    return NA if v is None else f"{v:.0f}{unit}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class GpuPanel(Static):
    DEFAULT_CSS = """
    GpuPanel { height: auto; padding: 0 1; }
    """

    _shown = ""

    def show(self, points: Sequence[ResourcePoint], *, compact: bool, device: str = "") -> None:
        width = self.content_region.width or max(20, self.size.width - 2)
        text = render_gpu(points, width, compact=compact, device=device)
        if text == self._shown:  # a sample arrives every ~2 s; the monitor asks twice a second
            return
        # Its height follows the line count (height: auto): relayout only when that changes.
        same_height = text.count("\n") == self._shown.count("\n") and bool(self._shown)
        self._shown = text
        self.update(text, layout=not same_height)

"""The run's log lines (``LogRecord`` events), appended incrementally to a ``Log`` widget, wrapped to
its width: a long line (a path, a warning from a library) continues on the next rows, indented under
the message, instead of running off the right edge."""

from __future__ import annotations

import re
import textwrap
import time
from collections import deque
from collections.abc import Sequence

from textual import events
from textual.widgets import Log

from ..state import LogLine

LEVEL_TAG = {"debug": "DBG", "info": "INF", "warning": "WRN", "error": "ERR"}
PREFIX_CELLS = len("00:00:00 INF ")  # where the message starts: continuation rows start here too
MAX_LINES = 1000


def format_line(line: LogLine) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line.ts)) if line.ts else "--:--:--"
    return f"{stamp} {LEVEL_TAG.get(line.level, line.level[:3].upper())} {line.message}"


class _Wrapper(textwrap.TextWrapper):
    """Also breaks after a ``/``, so a long path wraps at its separators instead of mid-name."""

    _chunks = re.compile(r"(\s+|[^\s/]*/+(?=[^\s/]))")

    def _split(self, text: str) -> list[str]:
        return [chunk for chunk in self._chunks.split(text) if chunk]


def wrap_line(text: str, width: int) -> list[str]:
    """``text`` (a formatted log line, maybe several lines) as rows of at most ``width`` characters;
    continuation rows are indented under the message where that leaves room for it."""
    if width <= 0:
        return text.splitlines() or [""]
    indent = " " * PREFIX_CELLS if width >= PREFIX_CELLS + 20 else ""
    rows: list[str] = []
    for index, part in enumerate(text.expandtabs().splitlines() or [""]):
        wrapper = _Wrapper(
            width=width,
            initial_indent="" if index == 0 else indent,
            subsequent_indent=indent,
            break_long_words=True,  # paths have no spaces: cut them rather than lose their end
            break_on_hyphens=False,
            replace_whitespace=False,
        )
        rows.extend(wrapper.wrap(part) or [""])
    return rows


class EventLog(Log):
    """Shows the tail of ``RunState.log``. The state keeps a bounded tuple; this widget remembers the
    last line it wrote (by identity) and writes only the newer ones. It keeps the unwrapped lines too,
    so a resize wraps them again to the new width."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; min-height: 3; scrollbar-gutter: stable; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=MAX_LINES, auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self._last: LogLine | None = None
        self._source: deque[str] = deque(maxlen=MAX_LINES)
        self._wrapped_at = 0  # the width the rows on show were wrapped to; 0: none yet

    @property
    def wrap_width(self) -> int:
        return self.scrollable_content_region.width

    def show(self, lines: Sequence[LogLine]) -> None:
        if not lines or lines[-1] is self._last:
            return
        start = 0
        if self._last is not None:
            for i in range(len(lines) - 1, -1, -1):
                if lines[i] is self._last:
                    start = i + 1
                    break
            else:
                self._source.clear()
                self._wrapped_at = 0
        new = [format_line(line) for line in lines[start:]]
        self._source.extend(new)
        self._last = lines[-1]
        width = self.wrap_width
        if width != self._wrapped_at:
            self._rewrap(width)
        elif width:
            self.write_lines([row for line in new for row in wrap_line(line, width)])

    def on_resize(self, _event: events.Resize) -> None:
        if self.wrap_width != self._wrapped_at:
            self._rewrap(self.wrap_width)

    def _rewrap(self, width: int) -> None:
        """Every kept line again, wrapped to ``width`` (nothing until the widget has a size)."""
        self.clear()
        self.set_scroll(0, 0)  # clear() keeps the old offset, past the end of the fewer rows that follow
        self._wrapped_at = width
        if width:
            self.write_lines([row for line in self._source for row in wrap_line(line, width)])

"""The run's log lines (``LogRecord`` events), appended incrementally to a ``Log`` widget."""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual.widgets import Log

from ..state import LogLine

LEVEL_TAG = {"debug": "DBG", "info": "INF", "warning": "WRN", "error": "ERR"}


def format_line(line: LogLine) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line.ts)) if line.ts else "--:--:--"
    return f"{stamp} {LEVEL_TAG.get(line.level, line.level[:3].upper())} {line.message}"


class EventLog(Log):
    """Shows the tail of ``RunState.log``. The state keeps a bounded tuple; this widget remembers the
    last line it wrote (by identity) and writes only the newer ones."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; min-height: 3; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=1000, auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self._last: LogLine | None = None

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
                self.clear()
        self.write_lines([format_line(line) for line in lines[start:]])
        self._last = lines[-1]
